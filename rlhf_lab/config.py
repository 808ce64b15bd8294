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
from dataclasses import fields, replace
from pathlib import Path

# torch is imported inside the functions that need it, so that `python -m rlhf_lab --help`
# answers at once instead of after loading torch.

SCALES = ("ci", "laptop", "gpu")
REPO_DIR = Path(__file__).resolve().parent.parent
# The temperature every policy samples at, and every log-prob is recomputed at (rule 2 of
# docs/implementation_rules.md). 0.7 is the classic choice for RLHF with PPO.
SAMPLING_TEMPERATURE = 0.7


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


def data_dir() -> Path:
    """The shipped data: the world's corpora and the small checkpoints."""
    return Path(os.environ.get("RLHF_LAB_DATA", REPO_DIR / "data"))


def artifacts_dir() -> Path:
    """Where runs save what they make ($RLHF_LAB_ARTIFACTS, else ./artifacts in the repository)."""
    return Path(os.environ.get("RLHF_LAB_ARTIFACTS", REPO_DIR / "artifacts"))


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
    ran it, and the checkpoint shipped in data/checkpoints otherwise.
    """
    candidates = [artifacts_dir() / stage, data_dir() / "checkpoints" / stage]
    for path in candidates:
        if (path / "config.json").exists():
            return path
    looked = " and ".join(str(p) for p in candidates)
    make = MAKE_COMMAND.get(stage, f"python -m rlhf_lab {stage} --out {candidates[0]}")
    raise FileNotFoundError(f"no {stage!r} checkpoint: looked in {looked}. Make one with: {make}")
