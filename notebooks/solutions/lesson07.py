"""Lesson 07 (beyond PPO): model solutions to the exercises.

Each function can be pasted into the exercise's stub cell as it is.
"""

import torch
import torch.nn.functional as F


def my_dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """The DPO loss of a batch of preference pairs (a scalar).

        h = β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]
        L = mean -log σ(h)

    Each input is (N,): the summed log-prob of the chosen (y_w) or rejected (y_l) answer under the
    policy π or the reference π_ref. It must stay finite when h is -1000.
    """
    chosen_logratio = policy_chosen_logps - ref_chosen_logps
    rejected_logratio = policy_rejected_logps - ref_rejected_logps
    h = beta * (chosen_logratio - rejected_logratio)
    return -F.logsigmoid(h).mean()  # logsigmoid: finite even where σ(h) rounds to 0


def my_rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE Leave-One-Out: each answer's baseline is the mean reward of the *other* answers.

        A_i = R_i - 1/(k-1) sum_{j != i} R_j

    rewards: (B prompts, k answers to each), k >= 2. Returns (B, k).
    """
    k = rewards.shape[1]
    others_sum = rewards.sum(dim=1, keepdim=True) - rewards  # the group's sum without answer i
    return rewards - others_sum / (k - 1)


def my_grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Group Relative Policy Optimisation: standardise the rewards within each group.

        A_i = (R_i - mean(R)) / (std(R) + ε)       std: the sample std (dividing by k - 1)

    rewards: (B prompts, k answers to each). A group whose answers all got the same reward (also
    a group of one answer) carries no signal: its advantages are exactly 0, never NaN.
    Returns (B, k).
    """
    flat = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    if rewards.shape[1] == 1:  # one answer: nothing to compare with (and its sample std is undefined)
        return torch.zeros_like(rewards)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    # Test the spread itself: in a flat group rounding can leave R_i - mean a tiny non-zero number.
    return torch.where(flat, 0.0, (rewards - mean) / (std + eps))
