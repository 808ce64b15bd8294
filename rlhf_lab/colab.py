"""Opening the lessons on Google Colab: the badge, the install cell, and where runs are kept.

The repository's public address lives here and nowhere else. `python -m rlhf_lab.maintain colab`
writes the "Open in Colab" badge and the Colab install cell into every lesson (and the badges into
the README) from it, and tests/test_colab.py fails if a notebook disagrees -- so after a move,
change `REPOSITORY` and run that command.

The install cell is a no-op outside Colab. On Colab it clones the course and installs it with
`--no-deps`: Colab already has torch, transformers, ipywidgets, pandas, matplotlib, safetensors
and tqdm, and it must keep *its* versions -- upgrading its ipywidgets 7.7.1 breaks widgets and
progress bars there, and a new torch would be a multi-GB CUDA download that no longer matches
the runtime. Lesson 08 needs TRL too; it is installed under a constraint that pins Colab's torch,
transformers and ipywidgets to the versions already there, so pip refuses rather than upgrades.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

REPOSITORY = "rlhf-lab/rlhf-lab"  # owner/name on GitHub: the one place the address is written
BRANCH = "main"
CLONE_DIR = "/content/rlhf-lab"  # where the install cell puts the course on a Colab runtime
DRIVE_DIR = "/content/drive/MyDrive/rlhf-lab"  # where runs are kept when Google Drive is mounted
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
KEEP = ("torch", "transformers", "ipywidgets")  # Colab's own versions; never upgraded by us
NOTEBOOK_EXTRAS = {"08_scaling_up.ipynb": ("trl>=1.16,<2", "accelerate>=1.10.1", "datasets")}


def repository_url() -> str:
    return f"https://github.com/{REPOSITORY}"


def colab_url(notebook: str | Path) -> str:
    """The address that opens `notebooks/<name>` from GitHub in Colab."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/notebooks/{Path(notebook).name}"


def badge_markdown(notebook: str | Path) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def install_cell(notebook: str | Path) -> str:
    """The source of a lesson's first code cell: installs the course on Colab, does nothing elsewhere."""
    extras = NOTEBOOK_EXTRAS.get(Path(notebook).name, ())
    lines = [
        "# On Colab only (a no-op anywhere else): fetch the course and install it without touching",
        "# Colab's own torch, transformers or ipywidgets -- upgrading its ipywidgets 7.7.1 breaks widgets.",
        "# Runs are kept on Google Drive if you allow it: a Colab runtime is wiped when it ends.",
        "import sys",
        "",
        "if \"google.colab\" in sys.modules:",
        "    import os",
        "    import subprocess",
        "",
        f"    if not os.path.isdir(\"{CLONE_DIR}\"):",
        f"        subprocess.run([\"git\", \"clone\", \"--depth\", \"1\", \"{repository_url()}\", "
        f"\"{CLONE_DIR}\"], check=True)",
        f"    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"--no-deps\", \"-e\", "
        f"\"{CLONE_DIR}\"], check=True)",
        f"    sys.path.insert(0, \"{CLONE_DIR}\")  # an editable install is seen by new kernels only",
        "    from rlhf_lab import colab",
        "",
    ]
    if extras:
        lines.append(f"    colab.install_keeping_colab_versions({list(extras)!r})")
    lines.append("    colab.keep_runs_on_drive()")
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


def install_keeping_colab_versions(requirements: list[str], run=None) -> None:
    """pip-install `requirements` with torch, transformers and ipywidgets pinned where they are.

    If a requirement needs another version of one of them, pip stops with its resolver error
    instead of replacing Colab's build.
    """
    import subprocess
    import sys
    import tempfile

    run = run or subprocess.run
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write("\n".join(pinned_constraints()) + "\n")
    run([sys.executable, "-m", "pip", "install", "-q", "-c", constraints.name, *requirements], check=True)


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
