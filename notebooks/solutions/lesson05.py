"""Lesson 05 (PPO): model solutions to the exercises.

Each function can be pasted into the exercise's stub cell as it is.
"""

import torch


def my_per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, beta: float) -> torch.Tensor:
    """PPO's per-token rewards: a KL penalty on every response token, the score on the last one.

        kl_t = log π(y_t) - log π_ref(y_t)
        r_t  = -β kl_t + score · [t is the last real token],    r_t = 0 on pads

    scores: (B,), the reward model's score of each response. logprobs, ref_logprobs, mask: (B, T),
    right-padded: mask is 1 on real tokens and 0 on pads (pads may hold junk). Returns (B, T).
    """
    real = mask.bool()
    # torch.where, not a product with the mask: junk in a pad (even NaN) is never read.
    kl = torch.where(real, logprobs - ref_logprobs, 0.0)
    rewards = -beta * kl
    last_real = real.sum(dim=1) - 1  # right padding: the real tokens are the first sum(mask) columns
    rows = torch.arange(rewards.shape[0])
    rewards[rows, last_real] += scores
    return rewards


def my_gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                      gamma: float = 1.0, lam: float = 0.95) -> torch.Tensor:
    """Generalised Advantage Estimation over each row of response tokens.

        δ_t = r_t + γ V_{t+1} - V_t        V_{t+1} = 0 after the last real token
        A_t = δ_t + γ λ A_{t+1}            A_{t+1} = 0 after the last real token

    rewards, values, mask: (B, T), right-padded: mask is 1 on real tokens, 0 on pads (pads may hold
    junk: nothing bootstraps past the end). Returns the advantages A, (B, T), 0 on pads.
    Tip: loop t from T - 1 down to 0, carrying the next token's value and advantage.
    """
    real = mask.bool()
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])  # V and A beyond the end of the response: 0
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        # On a pad, use 0 for r and V: the pad's junk must not leak into the real tokens before it.
        value = torch.where(real[:, t], values[:, t], 0.0)
        reward = torch.where(real[:, t], rewards[:, t], 0.0)
        delta = reward + gamma * next_value - value
        advantage = torch.where(real[:, t], delta + gamma * lam * next_advantage, 0.0)
        advantages[:, t] = advantage
        next_value, next_advantage = value, advantage
    return advantages


def my_clipped_surrogate_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                              mask: torch.Tensor, clip_eps: float = 0.2) -> torch.Tensor:
    """PPO's clipped surrogate loss, averaged over the real tokens (a scalar to minimise).

        ρ_t = exp(log π(y_t) - log π_old(y_t))
        L   = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))      (over tokens with mask 1)

    All inputs are (B, T); mask is 1 on real tokens and 0 on pads (pads may hold junk).
    """
    real = mask.bool()
    ratio = torch.exp(torch.where(real, logprobs - old_logprobs, 0.0))  # pads: ρ = 1, never exp(junk)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = torch.max(unclipped, clipped)  # the pessimistic (larger) loss
    return torch.where(real, per_token, 0.0).sum() / real.sum()
