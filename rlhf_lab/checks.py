"""Stop a run at the first NaN or infinity, and name it.

A NaN never fixes itself: one NaN reward makes the advantages NaN, then the loss, then every weight.
Every number logged after that is garbage, and the log no longer says where it started. So every
trainer checks what it computes as soon as it has it (the rollout's scores and log-probs, then the
loss, then the logged statistics) and stops at the first bad value, naming it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def first_non_finite(values: dict[str, float | Tensor]) -> tuple[str, str] | None:
    """`(name, description)` of the first value (in the order given) that holds a NaN or infinity."""
    for name, value in values.items():
        if isinstance(value, Tensor):
            bad = ~torch.isfinite(value.detach())
            if bad.any():
                shown = value.detach()[bad].flatten()[0].item()
                return name, f"{shown} in {int(bad.sum())} of {value.numel()} entries"
        elif isinstance(value, float) and not math.isfinite(value):
            return name, str(value)
    return None


def check_finite(where: str, values: dict[str, float | Tensor], after: str = "") -> None:
    """Raise FloatingPointError naming the first non-finite value: "<where>: <name> is nan ...".

    `after` is appended to the message: what happened to the run (e.g. which checkpoint is kept).
    Non-numeric values are ignored, so a whole history row can be passed.
    """
    bad = first_non_finite(values)
    if bad is not None:
        name, description = bad
        kept = f" ({after})" if after else ""
        raise FloatingPointError(f"{where}: {name} is {description}; training stopped{kept}")
