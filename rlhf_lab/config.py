"""Scales, devices, seeds and where files live.

Every trainer has its own config dataclass (its hyperparameters in one place, as in CleanRL);
`RLHF_LAB_SCALE` only picks which preset of those dataclasses a run uses:

    ci      tests: a lesson in about a minute
    laptop  the default on a CPU: each lesson within about five minutes on two cores
    gpu     the default when CUDA is present: a bigger policy and more steps
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from dataclasses import fields, replace
from pathlib import Path

# torch is imported inside the functions that need it, so that `python -m rlhf_lab --help`
# answers at once instead of after loading torch.

SCALES = ("ci", "laptop", "gpu")
REPO_DIR = Path(__file__).resolve().parent.parent
# Where a non-editable install (`pip install .`) keeps the repository's data/ folder: inside the
# package, which pyproject.toml maps data/ into (the package `rlhf_lab.shipped_data`).
PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "shipped_data"
# The temperature every policy samples at, and every log-prob is recomputed at (rule 2 of
# docs/implementation_rules.md). 0.7 is the classic choice for RLHF with PPO.
SAMPLING_TEMPERATURE = 0.7
# A progress bar (tqdm) shows only once its loop has run this many seconds: quick loops stay quiet,
# and a learner never waits on a long one in silence.
PROGRESS_DELAY = 2.0


def get_scale(name: str | None = None) -> str:
    """The scale to run at: `name`, else $RLHF_LAB_SCALE, else gpu on CUDA and laptop otherwise."""
    if not name and not os.environ.get("RLHF_LAB_SCALE"):
        import torch

        name = "gpu" if torch.cuda.is_available() else "laptop"
    name = name or os.environ["RLHF_LAB_SCALE"]
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}; valid scales: {', '.join(SCALES)}")
    return name


def for_scale(config_class, presets: dict[str, dict], scale: str | None = None, **overrides):
    """Build a trainer's config dataclass from its per-scale presets, then explicit overrides."""
    scale = get_scale(scale)
    known = {f.name for f in fields(config_class)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(known)}")
    return replace(config_class(**presets.get(scale, {})), **overrides)


def pick_device(override: str | None = None):
    """cuda, then mps, then cpu -- or $RLHF_LAB_DEVICE / `override` (a `torch.device`)."""
    import torch

    name = override or os.environ.get("RLHF_LAB_DEVICE")
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device, enabled: bool = True):
    """bf16 mixed precision on a CUDA GPU that has it natively; full precision everywhere else.

    Inside, matrix products run in bfloat16 on the tensor cores while the weights, the optimizer
    state, softmaxes and losses stay float32 (autocast keeps those ops in float32). bfloat16 has
    float32's exponent range, so no loss scaling is needed. GPUs before Ampere (a Colab T4) have no
    native bfloat16, and a CPU gains nothing from it: both stay in float32.
    """
    import torch

    device = torch.device(device)
    if enabled and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fused(optimizer_class, parameters, **settings):
    """`optimizer_class(parameters, **settings)` (Adam or AdamW), fused where this torch has it for the device.

    The fused version updates every tensor in one kernel instead of a few kernels per tensor: the
    same update to float32 rounding, about four times faster on our small models, where the
    optimizer step is a visible share of a training step. torch has it on CUDA (and on CPU and MPS
    from torch 2.4 and 2.5); elsewhere the constructor refuses, and we fall back to the default.
    """
    parameters = list(parameters)
    try:
        return optimizer_class(parameters, fused=True, **settings)
    except (RuntimeError, TypeError):  # no fused kernel for these parameters' device in this torch
        return optimizer_class(parameters, **settings)


def seed_everything(seed: int) -> None:
    """Seed Python and torch so that CPU runs repeat exactly."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def in_repository() -> bool:
    """Whether the package runs from a clone of the repository (`pip install -e .`, or a plain checkout)."""
    return (REPO_DIR / "pyproject.toml").is_file()


def data_dir() -> Path:
    """The shipped data (the world's corpora and the small checkpoints): $RLHF_LAB_DATA, else the
    repository's data/ folder, else the copy a non-editable install (`pip install .`) carries."""
    if os.environ.get("RLHF_LAB_DATA"):
        return Path(os.environ["RLHF_LAB_DATA"])
    if not in_repository() and (PACKAGED_DATA_DIR / "world").is_dir():
        return PACKAGED_DATA_DIR
    return REPO_DIR / "data"


def missing_data_hint() -> str:
    """What to do when the shipped data is not where `data_dir` looks (said in error messages)."""
    from rlhf_lab.colab import repository_url

    return (f"the shipped data is not at {data_dir()}: get it with  git clone {repository_url()}  and install from "
            "that folder (pip install -e . or pip install .), or point RLHF_LAB_DATA at its data/ folder")


def artifacts_dir() -> Path:
    """Where runs save what they make: $RLHF_LAB_ARTIFACTS, else artifacts/ in the repository (or, for
    an installed wheel, in the current folder: never inside the installed package)."""
    default = REPO_DIR / "artifacts" if in_repository() else Path.cwd() / "artifacts"
    return Path(os.environ.get("RLHF_LAB_ARTIFACTS", default))


# How to make each checkpoint when none exists yet (said in the error message).
MAKE_COMMAND = {
    "base": "python -m rlhf_lab pretrain --out artifacts/base",
    "sft": "python -m rlhf_lab sft --policy artifacts/base --out artifacts/sft",
    "reward": "python -m rlhf_lab reward --prefs data/world/preferences.jsonl --out artifacts/reward",
    "ppo": "python -m rlhf_lab ppo --policy artifacts/sft --reward artifacts/reward --out artifacts/ppo",
}


def find_checkpoint(stage: str) -> Path:
    """The newest checkpoint of a stage: a run's artifact if there is one, else the shipped one.

    This is what lets every lesson run on its own: it uses what the previous lesson made if you
    ran it, and the checkpoint shipped in data/checkpoints otherwise. Only a checkpoint the loaders
    accept counts (`checkpoints.check_checkpoint`, `check_weights`): a folder with a file missing,
    cut short or of the wrong shape is skipped, with a warning that names the folder and the file.
    """
    from rlhf_lab.checkpoints import CheckpointError, check_checkpoint, check_weights

    candidates = [artifacts_dir() / stage, data_dir() / "checkpoints" / stage]
    skipped = []
    for path in candidates:
        try:
            check_checkpoint(path, "reward" if stage == "reward" else "policy")  # also finishes an interrupted save
            check_weights(path)
        except (CheckpointError, FileNotFoundError) as error:
            if not path.exists():
                continue
            skipped.append(f"skipped {path}: {error}")
            warnings.warn(f"find_checkpoint({stage!r}) {skipped[-1]}", stacklevel=2)
            continue
        return path
    looked = " and ".join(str(p) for p in candidates)
    make = MAKE_COMMAND.get(stage, f"python -m rlhf_lab {stage} --out {candidates[0]}")
    hint = f"; {missing_data_hint()}" if not data_dir().is_dir() else ""
    raise FileNotFoundError(f"no {stage!r} checkpoint: looked in {looked}{''.join('; ' + s for s in skipped)}. "
                            f"Make one with: {make}{hint}")
