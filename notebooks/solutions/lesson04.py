"""Lesson 04 (reward model): model solutions to the exercises.

Each function can be pasted into the exercise's stub cell as it is.
"""

import torch
import torch.nn.functional as F


def my_bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """The Bradley-Terry loss of a batch of preference pairs (a scalar).

        L = mean_i -log σ(r_chosen_i - r_rejected_i)
        L = sum_i w_i (-log σ(Δ_i)) / sum_i w_i        (when per-pair weights w_i are given)

    chosen_rewards, rejected_rewards, weights: (N,). It must stay finite when the rewards are
    1000 apart. Tip: torch.nn.functional.logsigmoid.
    """
    # logsigmoid(Δ) = -log(1 + e^-Δ), computed without forming σ(Δ), which rounds to 0 at Δ = -1000.
    pair_losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    if weights is None:
        return pair_losses.mean()
    return (weights * pair_losses).sum() / weights.sum()


def my_last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The column of each row's last real token: the largest t with attention_mask[t] = 1.

    attention_mask: (B, T), 1 on real tokens, 0 on pads, which may be on the left, on the right
    or on both sides. Returns (B,) integer indices: where the reward head reads each answer.
    """
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    # Pads score 0 and real tokens their column, so the largest score is the last real column.
    return (columns * attention_mask.long()).argmax(dim=1)
