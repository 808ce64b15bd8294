"""Opening the lessons on Google Colab: the badge, the install cell, and where runs are kept.

The repository's public address and the revision Colab uses live here and nowhere else.
`python -m rlhf_lab.maintain colab` writes the "Open in Colab" badge and the Colab install cell into
every lesson (and the badges into the README) from them, and tests/test_colab.py fails if a notebook
disagrees -- so after a move, change `REPOSITORY` and run that command.

`REVISION` is a release tag: the badge opens the lessons as they were at that tag, and the install
cell installs the package from the same tag, so the notebook and the code it imports always match
(the moving `main` could change one under the other). To publish a release: bump
`rlhf_lab.__version__`, set `REVISION = "v<version>"`, run `python -m rlhf_lab.maintain colab`, commit,
and push the tag `v<version>` with that commit.

The install cell is a no-op outside Colab. On Colab it clones the course at `REVISION` and installs
it with `--no-deps`: Colab already has torch, transformers, ipywidgets, pandas, matplotlib,
safetensors and tqdm, and it must keep *its* versions -- upgrading its ipywidgets 7.7.1 breaks
widgets and progress bars there, and a new torch would be a multi-GB CUDA download that no longer
matches the runtime. Lesson 08 needs TRL too; it is installed under a constraint that pins Colab's
torch, transformers and ipywidgets to the versions already there, so pip refuses rather than
upgrades -- and if it refuses, one line says what to do.

Runs (the checkpoints a lesson saves for the next) stay on the runtime, which Colab wipes when it
ends, unless the learner ticks `KEEP_RUNS_ON_DRIVE` in the first cell: mounting Google Drive asks
for permission, and a dialog must never stop *Run all* on its own.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

from rlhf_lab import __version__

REPOSITORY = "rlhf-lab/rlhf-lab"  # owner/name on GitHub: the one place the address is written
REVISION = f"v{__version__}"  # the release tag Colab opens and installs (see the module docstring)
CLONE_DIR = "/content/rlhf-lab"  # where the install cell puts the course on a Colab runtime
DRIVE_DIR = "/content/drive/MyDrive/rlhf-lab"  # where runs are kept when Google Drive is mounted
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
KEEP = ("torch", "transformers", "ipywidgets")  # Colab's own versions; never upgraded by us
NOTEBOOK_EXTRAS = {"08_scaling_up.ipynb": ("trl>=1.16,<2", "accelerate>=1.10.1", "datasets")}
# Lessons that ask Colab for a GPU runtime (notebook metadata). The others train nano models in
# minutes on a CPU; a GPU runtime would only spend the learner's GPU quota.
GPU_NOTEBOOKS = ("08_scaling_up.ipynb",)
GPU_TYPE = "T4"  # the GPU of Colab's free tier


def repository_url() -> str:
    return f"https://github.com/{REPOSITORY}"


def colab_url(notebook: str | Path) -> str:
    """The address that opens `notebooks/<name>` at `REVISION` from GitHub in Colab."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{REVISION}/notebooks/{Path(notebook).name}"


def badge_markdown(notebook: str | Path) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def notebook_metadata(notebook: str | Path) -> dict:
    """The Colab part of a lesson's metadata: a GPU runtime for `GPU_NOTEBOOKS`, nothing else."""
    if Path(notebook).name in GPU_NOTEBOOKS:
        return {"accelerator": "GPU", "colab": {"gpuType": GPU_TYPE, "provenance": []}}
    return {}


def install_cell(notebook: str | Path) -> str:
    """The source of a lesson's first code cell: installs the course on Colab, does nothing elsewhere."""
    extras = NOTEBOOK_EXTRAS.get(Path(notebook).name, ())
    lines = [
        "# On Colab only (a no-op anywhere else): fetch the course and install it without touching",
        "# Colab's own torch, transformers or ipywidgets -- upgrading its ipywidgets 7.7.1 breaks widgets.",
        "# Colab deletes a runtime's files when it ends: tick the box to keep your runs on Google Drive",
        "# (it then asks for permission once, so Run all waits for you).",
        "KEEP_RUNS_ON_DRIVE = False  # @param {type:\"boolean\"}",
        "import sys",
        "",
        "if \"google.colab\" in sys.modules:",
        "    import os",
        "    import subprocess",
        "",
        f"    if not os.path.isdir(\"{CLONE_DIR}\"):  # the course as of release {REVISION}",
        f"        subprocess.run([\"git\", \"clone\", \"--depth\", \"1\", \"--branch\", \"{REVISION}\", "
        f"\"{repository_url()}\", \"{CLONE_DIR}\"], check=True)",
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"--no-deps\", \"-e\", "
        f"\"{CLONE_DIR}\"], check=True)",
        f"    sys.path.insert(0, \"{CLONE_DIR}\")  # an editable install is seen by new kernels only",
        "    from rlhf_lab import colab",
        "",
    ]
    if extras:
        lines.append(f"    colab.install_keeping_colab_versions({list(extras)!r})")
    lines.append("    colab.keep_runs(on_drive=KEEP_RUNS_ON_DRIVE)")
    return "\n".join(lines)


def pinned_constraints() -> list[str]:
    """`name==version` for each of Colab's packages we must not change (those installed)."""
    pins = []
    for name in KEEP:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return pins


class ColabInstallError(RuntimeError):
    """pip refused to install a lesson's extra packages next to Colab's own versions."""


def install_keeping_colab_versions(requirements: list[str], run=None) -> None:
    """pip-install `requirements` with torch, transformers and ipywidgets pinned where they are.

    If a requirement needs another version of one of them, pip refuses instead of replacing
    Colab's build, and `ColabInstallError` says in one line what to do (pip's resolver report is
    long, and the learner needs the fix, not the report).
    """
    import subprocess
    import sys
    import tempfile

    run = run or subprocess.run
    pins = pinned_constraints()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(pins) + "\n")
    result = run([sys.executable, "-m", "pip", "install", "-q", "-c", constraints.name, *requirements],
                 capture_output=True, text=True)
    if result.returncode != 0:
        names = " ".join(re.split(r"[<>=!~;\[ ]", requirement)[0] for requirement in requirements)
        raise ColabInstallError(
            f"{names} cannot be installed next to this Colab's {', '.join(pins)}; most often its transformers "
            f"is too old for TRL. Fix: run  !pip install -q -U transformers {names}  in a new cell, then "
            "Runtime > Restart session, and run this notebook again.") from None


def keep_runs(on_drive: bool, mount=None) -> Path:
    """Where this session's runs are saved: Google Drive if the learner asked (`keep_runs_on_drive`),
    else the runtime's disk, with one line saying they go when the runtime does."""
    if on_drive:
        return keep_runs_on_drive(mount)
    local = Path(CLONE_DIR) / "artifacts"
    os.environ["RLHF_LAB_ARTIFACTS"] = str(local)
    print(f"Runs are saved to {local}, which Colab deletes when this runtime ends (lessons fall back on the "
          "shipped checkpoints). To keep them: tick KEEP_RUNS_ON_DRIVE in the first cell and run it again.")
    return local


def keep_runs_on_drive(mount=None) -> Path:
    """Point RLHF_LAB_ARTIFACTS at Google Drive (asks for permission), else warn that runs are lost.

    Returns the folder where this session's runs will be saved.
    """
    if mount is None:
        from google.colab import drive  # only on Colab

        mount = drive.mount
    try:
        mount("/content/drive")
    except Exception as error:  # the learner declined, or Drive is unavailable
        local = Path(CLONE_DIR) / "artifacts"
        print(f"Google Drive not mounted ({error}). Runs go to {local}, which is DELETED when this "
              "Colab runtime ends; the shipped checkpoints are always there to fall back on.")
        os.environ["RLHF_LAB_ARTIFACTS"] = str(local)
        return local
    kept = Path(DRIVE_DIR) / "artifacts"
    kept.mkdir(parents=True, exist_ok=True)
    os.environ["RLHF_LAB_ARTIFACTS"] = str(kept)
    print(f"Runs are saved to {kept} on your Google Drive, so the next lesson (or a new runtime) finds them.")
    return kept
