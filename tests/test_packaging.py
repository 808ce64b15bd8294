"""pyproject.toml, environment.yml, the pytest setup and .ci/run agree with each other."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from rlhf_lab.colab import repository_url

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10; pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
README_TEST_COMMAND = 'pip install -e ".[test,trl]" && python -m pytest'
# conda-forge name -> PyPI name, where they differ.
CONDA_TO_PYPI = {"pytorch": "torch", "playwright-python": "playwright"}


def load_pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def pyproject_requirements() -> dict[str, SpecifierSet]:
    """{name: version range} of the dependencies plus the `test` and `trl` extras (what the tests install)."""
    project = load_pyproject()["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(text) for text in project["dependencies"] + extras["test"] + extras["trl"]]
    assert not any(requirement.marker or requirement.extras for requirement in requirements), "keep the lists plain"
    names = [canonicalize_name(requirement.name) for requirement in requirements]
    assert len(names) == len(set(names)), f"a package is listed twice in pyproject.toml: {names}"
    return {canonicalize_name(requirement.name): requirement.specifier for requirement in requirements}


def environment_requirements() -> tuple[dict[str, SpecifierSet], str, list]:
    """({PyPI name: version range}, the python spec, the pip section) from environment.yml."""
    environment = yaml.safe_load((REPO / "environment.yml").read_text(encoding="utf-8"))
    assert environment["channels"] == ["conda-forge"]
    requirements, python_spec, pip_section = {}, None, None
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            pip_section = entry["pip"]
        elif entry.startswith("python="):
            python_spec = entry.removeprefix("python=")
        elif entry != "pip":
            requirement = Requirement(entry)  # conda's `name>=a,<b` is valid PEP 508 too
            name = canonicalize_name(CONDA_TO_PYPI.get(requirement.name, requirement.name))
            assert name not in requirements, f"environment.yml lists {name} twice"
            requirements[name] = requirement.specifier
    return requirements, python_spec, pip_section


def test_environment_yml_names_the_same_packages_and_ranges_as_pyproject():
    conda, _, _ = environment_requirements()
    pypi = pyproject_requirements()
    assert sorted(conda) == sorted(pypi), (
        f"only in environment.yml: {sorted(set(conda) - set(pypi))}; "
        f"only in pyproject.toml: {sorted(set(pypi) - set(conda))}"
    )
    for name in pypi:
        assert conda[name] == pypi[name], \
            f"{name}: environment.yml says {conda[name]}, pyproject.toml says {pypi[name]}"


def test_environment_python_and_pip_section():
    _, python_spec, pip_section = environment_requirements()
    assert python_spec == "3.11"
    assert SpecifierSet(load_pyproject()["project"]["requires-python"]).contains("3.11")
    # The package itself, editable; everything else comes from conda-forge.
    assert pip_section == ["-e ."]


def test_version_ranges_admit_the_versions_the_course_targets():
    pypi = pyproject_requirements()
    assert pypi["ipywidgets"].contains("7.7.1") and pypi["ipywidgets"].contains("8.1.9")  # Colab and JupyterLab 4
    assert pypi["transformers"].contains("5.24.0") and pypi["transformers"].contains("4.45.0")
    assert pypi["torch"].contains("2.13.0")
    extras = load_pyproject()["project"]["optional-dependencies"]
    assert sorted(canonicalize_name(Requirement(text).name) for text in extras["trl"]) == ["accelerate", "trl"]


@pytest.mark.slow
def test_one_pytest_command_collects_unit_tests_and_notebooks_with_ci_defaults(tmp_path):
    # A one-cell notebook next to a real test file: both must be collected under the repo's config,
    # and the root conftest.py must set the ci defaults the notebook kernels inherit.
    notebook = {
        "cells": [{"cell_type": "code", "id": "c0", "execution_count": None, "metadata": {}, "outputs": [],
                   "source": ["1 + 1"]}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    notebook_path = tmp_path / "lesson.ipynb"
    notebook_path.write_text(json.dumps(notebook), encoding="utf-8")
    unset = {"RLHF_LAB_SCALE", "RLHF_LAB_ARTIFACTS", "MPLBACKEND"}
    env = {name: value for name, value in os.environ.items() if name not in unset}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--collect-only",
         str(REPO / "tests" / "test_jsonl.py"), str(notebook_path)],
        cwd=REPO, capture_output=True, text=True, env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<Function test_round_trip_keeps_records_order_and_unicode>" in result.stdout
    assert "<IPyNbCell Cell 0>" in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("RLHF_LAB_SCALE="))
    assert header.startswith("RLHF_LAB_SCALE=ci, RLHF_LAB_ARTIFACTS=")
    artifacts = Path(header.split("RLHF_LAB_ARTIFACTS=")[1])
    assert artifacts.name.startswith("rlhf-lab-test-artifacts-") and not artifacts.is_relative_to(REPO)
    assert not artifacts.exists(), "the session's temporary artifacts folder is removed at exit"


def test_this_session_runs_with_the_test_defaults():
    assert os.environ["MPLBACKEND"] and os.environ["RLHF_LAB_SCALE"]
    artifacts = Path(os.environ["RLHF_LAB_ARTIFACTS"])
    assert artifacts.is_dir() and artifacts != REPO / "artifacts"


def test_ci_script_ends_with_the_readme_test_command():
    script = REPO / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run must be executable (chmod +x .ci/run)"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert commands[-1] == README_TEST_COMMAND
    readme = REPO / "README.md"
    assert readme.is_file() and README_TEST_COMMAND in readme.read_text(encoding="utf-8"), (
        f"README.md must show the test command that CI runs: {README_TEST_COMMAND}"
    )


def test_every_notebook_cell_has_a_unique_id():
    # nbformat 4.5 requires cell ids (a missing one is a warning now and an error in future nbformat).
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        ids = [cell.get("id") for cell in notebook["cells"]]
        assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: cells without a unique id"


def test_project_metadata_names_the_license_and_the_repository():
    project = load_pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert "MIT" in (REPO / "README.md").read_text(encoding="utf-8"), "the README says which license, and why"
    assert {url.split("/issues")[0].split("/releases")[0] for url in project["urls"].values()} == {repository_url()}
    assert "Intended Audience :: Education" in project["classifiers"]
    assert not [c for c in project["classifiers"] if c.startswith("License ::")], "the SPDX `license` says it"
    python_versions = [c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if c.count("::") == 2 and
                       c.startswith("Programming Language :: Python :: 3.")]
    assert all(SpecifierSet(project["requires-python"]).contains(version) for version in python_versions)


# The first lesson's loading code, as a learner runs it after `pip install .` (not editable), away
# from the repository: the checkpoints must come with the installed package.
LESSON_01_LOADING = """
import json, rlhf_lab
from rlhf_lab import policy
from rlhf_lab.config import artifacts_dir, data_dir, find_checkpoint
from rlhf_lab.data import training_prompts
base_path = find_checkpoint("base")
base_model, tokenizer = policy.load_policy(base_path)
sft_model, _ = policy.load_policy(find_checkpoint("sft"))
print(json.dumps({"package": rlhf_lab.__file__, "data": str(data_dir()), "artifacts": str(artifacts_dir()),
                  "base": str(base_path), "sft": str(find_checkpoint("sft")), "prompts": len(training_prompts()),
                  "parameters": sum(p.numel() for p in sft_model.parameters())}))
"""


@pytest.mark.slow
def test_a_non_editable_install_carries_the_shipped_data(tmp_path):
    # A copy of the repository (the build writes build/ and *.egg-info next to pyproject.toml).
    source = tmp_path / "rlhf-lab"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                               "artifacts", "runs", ".venv*", ".*_cache"))
    # A fresh venv that sees this machine's torch and transformers (and pip and setuptools: no downloads).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = {name: value for name, value in os.environ.items()
           if name not in {"PYTHONPATH", "RLHF_LAB_DATA", "RLHF_LAB_ARTIFACTS"}}
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "--ignore-installed", "-q", source], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(source)  # nothing may be read from the clone any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([python, "-c", LESSON_01_LOADING], cwd=elsewhere, capture_output=True, text=True,
                            env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    installed = Path(found["package"]).parent
    assert installed.is_relative_to(venv), "the installed copy, not a clone on the path"
    assert Path(found["data"]) == installed / "shipped_data"
    assert Path(found["base"]) == installed / "shipped_data" / "checkpoints" / "base"
    assert Path(found["sft"]) == installed / "shipped_data" / "checkpoints" / "sft"
    assert found["prompts"] > 0 and found["parameters"] > 100_000
    assert Path(found["artifacts"]) == elsewhere / "artifacts", "runs are saved where the learner works"
    version = subprocess.run([venv / "bin" / "rlhf-lab", "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("rlhf-lab ")
