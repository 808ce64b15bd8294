"""A label given in a real JupyterLab, by a click in Chromium, lands in the store file.

Skipped when /usr/bin/chromium is missing, unless RLHF_LAB_REQUIRE_BROWSER=1 (CI sets it, so a
missing browser fails instead of silently passing).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.browser_harness import (
    CHROMIUM,
    click_widget,
    lab_session,
    notebook,
    open_notebook,
    run_all_cells,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ITEMS = [
    ("What is 2 plus 2?", "2 plus 2 is 4.", "I don't know."),
    ("Say hello.", "Hello! How can I help?", "Go away."),
]


@pytest.fixture
def require_browser():
    if not CHROMIUM.exists():
        if os.environ.get("RLHF_LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and RLHF_LAB_REQUIRE_BROWSER=1 (install Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing (set RLHF_LAB_REQUIRE_BROWSER=1 to make this a failure)")
    pytest.importorskip("playwright.sync_api")


def test_clicking_a_is_better_in_jupyterlab_saves_the_label(tmp_path, require_browser):
    store_path = tmp_path / "labels.jsonl"
    cells = [
        "from rlhf_lab.preferences import PreferenceStore\nfrom rlhf_lab.labelling_widgets import PairwiseLabeler",
        f"labeler = PairwiseLabeler({ITEMS!r}, PreferenceStore({str(store_path)!r}))\nlabeler",
    ]
    (tmp_path / "label.ipynb").write_text(json.dumps(notebook(cells)))

    with lab_session(root_dir=tmp_path, artifacts_dir=tmp_path / "browser") as (server, page):
        open_notebook(page, server, "label.ipynb")
        run_all_cells(page)
        click_widget(page, ".rlhf-choice-a")

        def saved_records() -> list[dict]:
            if not store_path.exists():
                return []
            return [json.loads(line) for line in store_path.read_text().splitlines()]

        records = wait_until(saved_records, 60, f"the label to be written to {store_path}")
        # The widget moved on to the second item only after saving the first.
        page.get_by_text("Hello! How can I help?").first.wait_for(state="visible")

    assert len(records) == 1
    assert (records[0]["prompt"], records[0]["chosen"], records[0]["rejected"]) == ITEMS[0]
    assert records[0]["source"] == "human" and records[0]["tie"] is False
