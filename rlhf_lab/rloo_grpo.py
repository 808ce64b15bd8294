"""Critic-free advantages: sample k answers per prompt and compare each with its siblings.

PPO learns a value function to know whether a reward was good *for this prompt*. RLOO and GRPO
skip the critic: they sample a group of k answers to the same prompt and use the group itself as
the baseline. Rewards are one score per whole answer, shape (B prompts, k answers).
"""

import torch
from torch import Tensor


def _check_groups(function_name: str, rewards: Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(
            f"{function_name}: `rewards` must have shape (B prompts, k answers), got {tuple(rewards.shape)}"
        )


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out: each answer's baseline is the mean of the *other* k - 1 answers.

        A_i = R_i - 1/(k-1) sum_{j != i} R_j

    Leaving R_i out keeps the baseline independent of answer i, so the gradient stays unbiased.
    """
    _check_groups("rloo_advantages", rewards)
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"rloo_advantages: needs k >= 2 answers per prompt to leave one out, got k={k}")
    leave_one_out_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - leave_one_out_mean


def grpo_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """Group Relative Policy Optimisation: standardise the rewards within each group.

        A_i = (R_i - mean(R)) / (std(R) + ε)

    A group whose answers all got the same reward carries no signal: its advantages are exactly 0
    (never NaN, also for k = 1).
    """
    _check_groups("grpo_advantages", rewards)
    if rewards.shape[1] == 1:
        # A single answer has nothing to be compared with (and its sample std is undefined).
        return torch.zeros_like(rewards)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    advantages = (rewards - mean) / (std + eps)
    # Rounding makes R_i - mean a tiny non-zero number in a flat group, which ε would not
    # fully silence; test the spread itself to return exact zeros.
    flat_group = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    return torch.where(flat_group, 0.0, advantages)
