"""The lessons are committed with the outputs of a laptop-scale run of their *current* cells.

`python -m rlhf_lab.maintain outputs` runs every lesson and records the SHA-256 of its cell sources in
the notebook's metadata. A lesson edited since (a cell added, a word changed) no longer matches: run
that command again (it takes about half an hour on two cores) and commit the notebooks it rewrites.
"""

import json

import pytest

from rlhf_lab import lesson_runs

LESSONS = lesson_runs.lessons()


@pytest.mark.parametrize("path", LESSONS, ids=[path.stem for path in LESSONS])
def test_committed_outputs_come_from_a_laptop_run_of_the_current_cells(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    recorded = notebook["metadata"].get(lesson_runs.METADATA_KEY, {})
    assert recorded.get("scale") == "laptop", (
        f"{path.name}: no laptop-scale outputs; run python -m rlhf_lab.maintain outputs")
    assert recorded.get("source_sha256") == lesson_runs.source_sha256(notebook), (
        f"{path.name} changed since its outputs were made: run python -m rlhf_lab.maintain outputs {path.stem[:2]}")
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert sum(bool(cell["outputs"]) for cell in code_cells) >= len(code_cells) // 2, f"{path.name}: few outputs"
    errors = [output for cell in code_cells for output in cell["outputs"] if output["output_type"] == "error"]
    assert not errors, f"{path.name}: a cell's committed output is an error"
