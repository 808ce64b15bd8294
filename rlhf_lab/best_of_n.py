"""Best-of-n sampling: draw n answers, keep the one the reward model likes best.

No training at all, yet it moves the answer distribution away from the base policy. How far, in
KL, depends only on n.
"""

import math

import torch
from torch import Tensor


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ base) = log n - (n - 1) / n   nats.

    Exact when the reward has a continuous distribution (no ties); for a discrete one it is an
    upper bound, tight when every single answer is unlikely (Beirami et al., 2024).
    """
    if n < 1:
        raise ValueError(f"best_of_n_kl: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_select(scores: Tensor) -> Tensor:
    """Index of the best-scoring of n candidates, per prompt: scores (B, n) -> index (B,).

    Ties go to the first candidate.
    """
    if scores.dim() != 2:
        raise ValueError(f"best_of_n_select: `scores` must have shape (B, n), got {tuple(scores.shape)}")
    return torch.argmax(scores, dim=1)
