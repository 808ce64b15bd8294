"""The script that runs the lessons for their committed outputs and the course's timing."""

import copy
import json

import pytest

from rlhf_lab import lesson_runs


def tiny_notebook() -> dict:
    return {"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# Title\n", "text"]},
                      {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": 1, "source": ["1 + 1"],
                       "outputs": [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                    "data": {"text/plain": "2"}}]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_the_hash_follows_the_sources_and_ignores_the_outputs():
    notebook = tiny_notebook()
    digest = lesson_runs.source_sha256(notebook)
    without_outputs = copy.deepcopy(notebook)
    without_outputs["cells"][1]["outputs"], without_outputs["cells"][1]["execution_count"] = [], None
    assert lesson_runs.source_sha256(without_outputs) == digest
    edited = copy.deepcopy(notebook)
    edited["cells"][1]["source"] = ["1 + 2"]
    assert lesson_runs.source_sha256(edited) != digest
    retyped = copy.deepcopy(notebook)
    retyped["cells"][0]["cell_type"] = "raw"
    assert lesson_runs.source_sha256(retyped) != digest


def test_progress_bars_are_dropped_and_everything_else_kept():
    notebook = tiny_notebook()
    bar = {"output_type": "display_data", "metadata": {},
           "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2},
                    "text/plain": "HBox(children=(HTML(value='PPO'), FloatProgress(value=0.0, max=40.0)))"}}
    text_bar = {"output_type": "stream", "name": "stderr", "text": "PPO:  50%|█████     | 20/40 [00:10<00:10]\r"}
    warning = {"output_type": "stream", "name": "stderr", "text": "UserWarning: something worth reading\n"}
    labeller = {"output_type": "display_data", "metadata": {},
                "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "y", "version_major": 2},
                         "text/plain": "VBox(children=(HTML(value='<b>Which answer is better?</b>'),))"}}
    # How tqdm.auto's bar is saved by a run: a widget view whose text form is the bar itself.
    tqdm_view = {"output_type": "display_data", "metadata": {},
                 "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "z", "version_major": 2},
                          "text/plain": "reward model, epoch 1:   0%|          | 0/262 [00:00<?, ?it/s]"}}
    kept = notebook["cells"][1]["outputs"] + [warning, labeller]
    notebook["cells"][1]["outputs"] = [bar, notebook["cells"][1]["outputs"][0], text_bar, tqdm_view, warning, labeller]
    notebook["metadata"]["widgets"] = {"state": {"x": {}, "y": {}, "z": {}}}
    lesson_runs.drop_progress_bars(notebook)
    assert notebook["cells"][1]["outputs"] == kept
    assert "widgets" in notebook["metadata"], "the labeller is still shown: its widget state stays"


def test_the_widget_state_goes_when_only_progress_bars_used_it():
    notebook = tiny_notebook()
    notebook["cells"][1]["outputs"].append(
        {"output_type": "display_data", "metadata": {},
         "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "z", "version_major": 2},
                  "text/plain": "PPO:  45%|####5     | 18/40 [00:10<00:12,  1.80it/s]"}})
    notebook["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"z": {}}}}
    lesson_runs.drop_progress_bars(notebook)
    assert len(notebook["cells"][1]["outputs"]) == 1 and "widgets" not in notebook["metadata"]


def test_lessons_are_found_by_number_or_name_and_a_wrong_one_is_named():
    every = lesson_runs.lessons()
    assert [path.name[:2] for path in every] == sorted(path.name[:2] for path in every) and len(every) >= 8
    assert [path.stem for path in lesson_runs.lessons(["05"])] == ["05_ppo"]
    with pytest.raises(ValueError, match="99"):
        lesson_runs.lessons(["99"])
    assert json.loads(every[0].read_text())["cells"]  # real notebooks
