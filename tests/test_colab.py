"""Every lesson opens in Colab from one address, and its install cell is a no-op anywhere else."""

import json
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

import rlhf_lab
from rlhf_lab import colab, maintain

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_lessons():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_lesson_starts_with_the_badge_and_the_install_cell_from_the_one_address(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    expected = maintain.colab_cells(path)
    for cell, want in zip(cells[:2], expected):
        assert cell["cell_type"] == want["cell_type"]
        assert "".join(cell["source"]) == "".join(want["source"]), (
            f"{path.name} is out of date with rlhf_lab/colab.py: run  python -m rlhf_lab.maintain colab")
    assert colab.colab_url(path) == (f"https://colab.research.google.com/github/{colab.REPOSITORY}/blob/"
                                     f"{colab.REVISION}/notebooks/{path.name}")


def test_colab_opens_and_installs_a_release_not_the_moving_main():
    assert colab.REVISION == f"v{rlhf_lab.__version__}", "the tag of this version (see rlhf_lab/colab.py)"
    for path in NOTEBOOKS:
        assert f"/blob/{colab.REVISION}/" in colab.badge_markdown(path)
        assert f'"--branch", "{colab.REVISION}"' in colab.install_cell(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_gpu_runtime_is_asked_for_where_a_gpu_helps_and_nowhere_else(path):
    metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    if path.name in colab.GPU_NOTEBOOKS:
        assert metadata["accelerator"] == "GPU" and metadata["colab"]["gpuType"] == colab.GPU_TYPE
    else:
        assert "accelerator" not in metadata and "colab" not in metadata
    assert "08_scaling_up.ipynb" in colab.GPU_NOTEBOOKS


def test_the_readme_has_a_badge_per_lesson_and_the_same_address():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert maintain.readme_badges(NOTEBOOKS) in readme, "run  python -m rlhf_lab.maintain colab"
    assert f"git clone {colab.repository_url()}" in readme
    assert f"as of the release `{colab.REVISION}`" in readme, "the README names the release Colab installs"


def test_the_colab_command_changes_nothing_when_up_to_date(tmp_path, monkeypatch):
    notebook = tmp_path / NOTEBOOKS[0].name
    notebook.write_text(NOTEBOOKS[0].read_text(encoding="utf-8"), encoding="utf-8")
    assert not maintain.write_notebook_cells(notebook)
    cells = json.loads(notebook.read_text())["cells"]
    cells[1]["source"] = ["# On Colab only: an older install cell\n"]
    cells.pop(0)  # and no badge
    notebook.write_text(json.dumps({**json.loads(notebook.read_text()), "cells": cells}, indent=1))
    assert maintain.write_notebook_cells(notebook)
    rewritten = json.loads(notebook.read_text())["cells"]
    assert [c["source"] for c in rewritten[:2]] == [c["source"] for c in maintain.colab_cells(notebook)]
    assert rewritten[2:] == cells[1:], "the lesson's own cells are kept, in order"


def never_mount(where):
    raise AssertionError("Google Drive was mounted although the learner did not ask")


def run_install_cell(notebook: str, monkeypatch, on_colab: bool, mount=None, keep_on_drive=False,
                     pip_fails=False) -> list[list[str]]:
    """Execute a lesson's install cell with subprocess.run recorded instead of run."""
    commands = []

    def fake_run(command, check=False, **kwargs):
        commands.append([str(part) for part in command])
        if pip_fails and "-c" in command:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: ResolutionImpossible: ... (many lines)")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cell inserts the clone; undo it afterwards
    if on_colab:
        drive = types.SimpleNamespace(mount=mount or never_mount)
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
        monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(drive=drive))
        monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    source = colab.install_cell(notebook)
    if keep_on_drive:  # the learner ticked the box
        source = source.replace("KEEP_RUNS_ON_DRIVE = False", "KEEP_RUNS_ON_DRIVE = True")
    exec(compile(source, notebook, "exec"), {"__name__": "__main__"})
    return commands


def test_the_install_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delenv("RLHF_LAB_ARTIFACTS", raising=False)
    for path in NOTEBOOKS:
        assert run_install_cell(path.name, monkeypatch, on_colab=False) == []
    import os

    assert "RLHF_LAB_ARTIFACTS" not in os.environ


def test_on_colab_it_installs_without_touching_colabs_torch_transformers_or_ipywidgets(monkeypatch, capsys):
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", "unchanged")
    commands = run_install_cell("03_preferences.ipynb", monkeypatch, on_colab=True)  # Drive: never_mount
    assert commands[0] == ["git", "clone", "--depth", "1", "--branch", colab.REVISION, colab.repository_url(),
                           colab.CLONE_DIR]
    assert commands[1][1:] == ["-m", "pip", "install", "-q", "--no-deps", "-e", colab.CLONE_DIR]
    assert len(commands) == 2, "no other install for a lesson without extras"
    import os

    # Drive is opt-in: Run all never stops at a login dialog, and the learner is told where runs go.
    assert os.environ["RLHF_LAB_ARTIFACTS"] == str(Path(colab.CLONE_DIR) / "artifacts")
    assert "tick KEEP_RUNS_ON_DRIVE" in capsys.readouterr().out


def test_ticking_the_box_keeps_runs_on_google_drive(monkeypatch, tmp_path):
    monkeypatch.setattr(colab, "DRIVE_DIR", str(tmp_path / "MyDrive" / "rlhf-lab"))
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", "unchanged")
    mounted = []
    run_install_cell("03_preferences.ipynb", monkeypatch, on_colab=True, mount=mounted.append, keep_on_drive=True)
    import os

    assert mounted == ["/content/drive"]
    assert os.environ["RLHF_LAB_ARTIFACTS"] == str(tmp_path / "MyDrive" / "rlhf-lab" / "artifacts")
    assert Path(os.environ["RLHF_LAB_ARTIFACTS"]).is_dir()


def test_lesson_08_installs_trl_with_colabs_versions_pinned(monkeypatch):
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", "unchanged")
    commands = run_install_cell("08_scaling_up.ipynb", monkeypatch, on_colab=True)
    trl_install = commands[2]
    assert "trl>=1.16,<2" in trl_install and "-c" in trl_install
    constraints = Path(trl_install[trl_install.index("-c") + 1]).read_text().split()
    for name in ("torch", "transformers", "ipywidgets"):
        assert f"{name}=={metadata.version(name)}" in constraints
        assert not any(part.startswith(name) for part in trl_install), f"{name} must not be asked for"


def test_without_drive_runs_go_to_the_runtime_and_the_learner_is_told(monkeypatch, capsys):
    def refuse(where):
        raise RuntimeError("mount failed")

    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", "unchanged")
    kept = colab.keep_runs_on_drive(mount=refuse)
    import os

    assert kept == Path(colab.CLONE_DIR) / "artifacts" and os.environ["RLHF_LAB_ARTIFACTS"] == str(kept)
    assert "DELETED when this Colab runtime ends" in capsys.readouterr().out


def test_when_colabs_transformers_is_too_old_for_trl_one_line_says_what_to_do(monkeypatch):
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", "unchanged")
    with pytest.raises(colab.ColabInstallError) as raised:
        run_install_cell("08_scaling_up.ipynb", monkeypatch, on_colab=True, pip_fails=True)
    message = str(raised.value)
    assert "\n" not in message and "ResolutionImpossible" not in message, "one line, not pip's report"
    assert f"transformers=={metadata.version('transformers')}" in message
    assert "!pip install -q -U transformers trl accelerate datasets" in message and "Restart session" in message


def test_the_colab_command_leaves_a_run_lessons_outputs_alone(tmp_path):
    # `maintain outputs` writes a lesson through nbformat (keys sorted) after running it, so its install
    # cell has an execution count: the colab command must see that as up to date, not rewrite it.
    import nbformat

    notebook = tmp_path / NOTEBOOKS[0].name
    executed = nbformat.read(NOTEBOOKS[0], as_version=4)
    executed.cells[1].execution_count = 1
    executed.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="installed\n")]
    nbformat.write(executed, notebook)
    before = notebook.read_text(encoding="utf-8")
    assert not maintain.write_notebook_cells(notebook)
    assert notebook.read_text(encoding="utf-8") == before
