"""Lesson 03 in a real JupyterLab: run every cell at ci scale, click "A is better", find the label on disk.

A copy of the lesson runs from a temporary folder, with RLHF_LAB_ARTIFACTS pointing to another one,
so nothing is written into the repository. Skipped when /usr/bin/chromium is missing, unless
RLHF_LAB_REQUIRE_BROWSER=1 (the same rule as tests/test_browser.py).
"""

from __future__ import annotations

import json
import shutil

import pytest

from rlhf_lab import world
from tests.browser_harness import (
    REPO_ROOT,
    cell_errors,
    click_widget,
    lab_session,
    open_notebook,
    run_all_cells,
    wait_for_kernel_idle,
    wait_until,
)
from tests.test_browser import require_browser  # noqa: F401  (a fixture: the same skip-or-fail rule)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("require_browser")]

LESSON = REPO_ROOT / "notebooks" / "03_preferences.ipynb"
PAIRWISE = ".rlhf-pairwise-labeler"


def shown_answer(page, heading: str) -> str:
    """The text of one answer box of the pairwise widget ("Answer A" / "Answer B"), without its heading.

    The box is `<div><b>Answer A</b><br>the answer</div>` (see rlhf_lab.labelling_widgets); waits until it is filled.
    """
    box = page.locator(f"{PAIRWISE} b", has_text=heading).first.locator("xpath=..")
    return wait_until(lambda: (box.text_content() or "").removeprefix(heading).strip(), 60, f"the text of {heading}")


def test_lesson03_in_jupyterlab_a_click_on_a_is_better_saves_the_label(tmp_path, monkeypatch):
    # The kernel inherits the server's environment: ci scale, and labels into a temporary folder.
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("RLHF_LAB_SCALE", "ci")
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", str(artifacts))
    lesson_dir = tmp_path / "lesson"
    lesson_dir.mkdir()
    shutil.copy(LESSON, lesson_dir / LESSON.name)
    store_path = artifacts / "preferences" / "learner.jsonl"

    def saved_records() -> list[dict]:
        if not store_path.exists():
            return []
        return [json.loads(line) for line in store_path.read_text().splitlines() if line.strip()]

    with lab_session(root_dir=lesson_dir, artifacts_dir=tmp_path / "browser") as (server, page):
        open_notebook(page, server, LESSON.name)
        run_all_cells(page)
        # Wait for the widget's cell to run, note the pair on screen, then click.
        page.locator(f"{PAIRWISE} .rlhf-choice-a").first.wait_for(state="visible", timeout=180_000)
        answer_a, answer_b = shown_answer(page, "Answer A"), shown_answer(page, "Answer B")
        click_widget(page, f"{PAIRWISE} .rlhf-choice-a")
        # The kernel handles the click after the cells still queued, so allow for the whole lesson.
        records = wait_until(saved_records, 240, f"the label to be written to {store_path}")
        page.locator(f"{PAIRWISE} .rlhf-message", has_text="Saved.").wait_for(state="visible")
        wait_for_kernel_idle(page, timeout_s=240)
        errors = [text for text in cell_errors(page) if "Error" in text or "Traceback" in text]

    assert not errors, "a lesson cell failed:\n" + "\n---\n".join(errors)
    assert len(records) == 1, records
    record = records[0]
    assert world.parse_prompt(record["prompt"]) is not None, "the item is a prompt of the world"
    assert (record["chosen"], record["rejected"]) == (answer_a, answer_b), "A, the answer shown first, was chosen"
    assert record["source"] == "human" and record["annotator"] == "learner" and record["tie"] is False
