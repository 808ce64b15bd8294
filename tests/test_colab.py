"""Every lesson opens in Colab from one address, and its install cell is a no-op anywhere else."""

import json
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

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
                                     f"{colab.BRANCH}/notebooks/{path.name}")


def test_the_readme_has_a_badge_per_lesson_and_the_same_address():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert maintain.readme_badges(NOTEBOOKS) in readme, "run  python -m rlhf_lab.maintain colab"
    assert f"git clone {colab.repository_url()}" in readme


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


def run_install_cell(notebook: str, monkeypatch, on_colab: bool, mount=None) -> list[list[str]]:
    """Execute a lesson's install cell with subprocess.run recorded instead of run."""
    commands = []

    def fake_run(command, check=False, **kwargs):
        commands.append([str(part) for part in command])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cell inserts the clone; undo it afterwards
    if on_colab:
        drive = types.SimpleNamespace(mount=mount or (lambda where: None))
        monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
        monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(drive=drive))
        monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(colab.install_cell(notebook), notebook, "exec"), {"__name__": "__main__"})
    return commands


def test_the_install_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delenv("RLHF_LAB_ARTIFACTS", raising=False)
    for path in NOTEBOOKS:
        assert run_install_cell(path.name, monkeypatch, on_colab=False) == []
    import os

    assert "RLHF_LAB_ARTIFACTS" not in os.environ


def test_on_colab_it_installs_without_touching_colabs_torch_transformers_or_ipywidgets(monkeypatch, tmp_path):
    monkeypatch.setattr(colab, "DRIVE_DIR", str(tmp_path / "MyDrive" / "rlhf-lab"))
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", "unchanged")
    commands = run_install_cell("03_preferences.ipynb", monkeypatch, on_colab=True)
    assert commands[0] == ["git", "clone", "--depth", "1", colab.repository_url(), colab.CLONE_DIR]
    assert commands[1][1:] == ["-m", "pip", "install", "-q", "--no-deps", "-e", colab.CLONE_DIR]
    assert len(commands) == 2, "no other install for a lesson without extras"
    import os

    assert os.environ["RLHF_LAB_ARTIFACTS"] == str(tmp_path / "MyDrive" / "rlhf-lab" / "artifacts")
    assert Path(os.environ["RLHF_LAB_ARTIFACTS"]).is_dir()


def test_lesson_08_installs_trl_with_colabs_versions_pinned(monkeypatch, tmp_path):
    monkeypatch.setattr(colab, "DRIVE_DIR", str(tmp_path / "drive"))
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
