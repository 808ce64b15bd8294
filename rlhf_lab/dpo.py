"""Direct Preference Optimisation: fit the policy to preferences without a reward model or PPO.

DPO notices that the KL-regularised RLHF objective has a closed-form optimum, in which the reward
is β (log π(y) - log π_ref(y)) up to a per-prompt constant. Plugging that implicit reward into the
Bradley-Terry loss gives a plain classification loss on preference pairs (Rafailov et al., 2023).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhf_lab.masked import check_same_shape


def sequence_logprob(token_logprobs: Tensor, mask: Tensor) -> Tensor:
    """log π(y) = sum_t m_t log π(y_t): the response's log-prob, summed over its real tokens.

    `token_logprobs` and `mask` are (B, T) over response tokens; the result is (B,).
    Prompt tokens and pads must be 0 in the mask: DPO scores only the response.
    """
    check_same_shape("sequence_logprob", token_logprobs=token_logprobs, mask=mask)
    return torch.where(mask.bool(), token_logprobs, 0.0).sum(dim=-1)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO loss over a batch of preference pairs (sequence log-probs, shape (B,)).

        h = β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]
        L = mean -log σ(h)

    Returns:
        loss: a scalar to minimise.
        chosen_rewards, rejected_rewards: the implicit rewards β (log π(y) - log π_ref(y)) of
            each answer, detached (for logging: their difference is the reward margin).
    """
    check_same_shape(
        "dpo_loss",
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    preference_logits = beta * (chosen_logratios - rejected_logratios)
    loss = -F.logsigmoid(preference_logits).mean()
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return loss, chosen_rewards, rejected_rewards
