"""PPO for a language model: the formulas (GAE, clipped surrogate, clipped value loss) and the trainer.

All per-token tensors have shape (B, T) over the *response* tokens only: token t of the response,
its log-prob, value and reward. `mask` is 1 on real response tokens (up to and including the end
token) and 0 on pads; pad slots may hold junk and are never read.
"""

import torch
from torch import Tensor

from rlhf_lab.kl import kl_k3
from rlhf_lab.masked import check_same_shape, masked_mean, masked_var

# =====================================================================================
# The PPO formulas: short pure functions, tensors in, tensors out.
# =====================================================================================


@torch.no_grad()  # advantages and returns are fixed targets: gradients must never flow into them
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation over the response tokens of each row.

        δ_t = r_t + γ V_{t+1} - V_t,    with V = 0 after the last real token
        A_t = δ_t + γ λ A_{t+1},        with A = 0 after the last real token
        R_t = A_t + V_t                 (the value targets)

    Nothing bootstraps past the end of a response: the episode ends at its end token. λ = 1 gives
    the Monte-Carlo reward-to-go minus V; λ = 0 gives the one-step TD residual δ_t.

    The returns use the raw advantages; whiten the advantages (`masked_whiten`) only afterwards,
    for the policy loss.

    Returns:
        advantages, returns: (B, T), 0 on pads.
    """
    check_same_shape("gae", rewards=rewards, values=values, mask=mask)
    real = mask.bool()
    advantages = torch.zeros_like(values)
    # V_{t+1} and A_{t+1} of the next *real* token; 0 beyond the end of the response.
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        td_residual = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = td_residual + gamma * lam * next_advantage
        is_real = real[:, t]
        advantages[:, t] = torch.where(is_real, advantage, 0.0)
        # A pad slot is skipped: it neither has an advantage nor passes a value backwards.
        next_value = torch.where(is_real, values[:, t], next_value)
        next_advantage = torch.where(is_real, advantage, next_advantage)
    returns = torch.where(real, advantages + values, 0.0)
    return advantages, returns


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate loss of PPO, averaged over real tokens.

        ρ_t = exp(log π(y_t) - log π_old(y_t))
        L   = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))

    Taking the max of the two losses is the pessimistic choice: once a token's ratio has moved
    past 1 ± ε in the direction its advantage favours, its gradient is zero.

    Returns:
        loss: a scalar to minimise.
        stats: `clip_fraction` (share of real tokens where the clipped branch is active),
            `approx_kl` (mean k3 estimate of KL(π_old ‖ π)), `ratio_mean`; plain floats.
            On the first minibatch of the first epoch they must be 0, 0 and 1.
    """
    check_same_shape(
        "ppo_policy_loss", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask
    )
    real = mask.bool()
    # Zero the pad slots first, so junk there cannot reach the loss or its gradient.
    log_ratio = torch.where(real, logprobs - old_logprobs, 0.0)
    advantages = torch.where(real, advantages, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.max(unclipped_loss, clipped_loss), mask)

    with torch.no_grad():
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
        # Samples came from π_old, so k3 with r = π/π_old = ρ estimates KL(π_old ‖ π).
        approx_kl = masked_mean(kl_k3(old_logprobs.detach(), logprobs.detach()), mask)
        ratio_mean = masked_mean(ratio, mask)
    stats = {
        "clip_fraction": clip_fraction.item(),
        "approx_kl": approx_kl.item(),
        "ratio_mean": ratio_mean.item(),
    }
    return loss, stats


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped value loss: the critic may not move more than ε from its rollout values.

        V_clip = clip(V, V_old - ε, V_old + ε)
        L      = ½ mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)

    Inside the band V_clip = V and this is plain squared error; outside it the max keeps the
    larger (pessimistic) error.

    Returns:
        loss: a scalar to minimise.
        stats: `value_clip_fraction`, the share of real tokens where the clipped branch is active.
    """
    check_same_shape("ppo_value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    real = mask.bool()
    values = torch.where(real, values, 0.0)
    old_values = torch.where(real, old_values, 0.0)
    returns = torch.where(real, returns, 0.0)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        value_clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, {"value_clip_fraction": value_clip_fraction.item()}


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the returns' variance the critic explains, over real tokens.

        EV = 1 - Var[R - V] / Var[R]

    1 is a perfect critic, 0 is no better than predicting the mean, below 0 is worse than that.
    NaN when the returns have no variance (nothing to explain).
    """
    check_same_shape("explained_variance", values=values, returns=returns, mask=mask)
    returns_variance = masked_var(returns, mask, unbiased=False)
    residual_variance = masked_var(returns - values, mask, unbiased=False)
    if returns_variance == 0:
        return torch.tensor(float("nan"))
    return 1.0 - residual_variance / returns_variance


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of the next-token distribution over real tokens.

        H_t = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v,    p = softmax(z)

    `logits` is (B, T, V) and must already be divided by the sampling temperature.
    """
    if logits.shape[:-1] != mask.shape:
        raise ValueError(
            f"entropy_from_logits: `logits` has shape {tuple(logits.shape)}, so `mask` needs shape "
            f"{tuple(logits.shape[:-1])}, but it has {tuple(mask.shape)}"
        )
    # Blank the pad rows first so that junk there (even NaN) cannot reach the gradient.
    logits = torch.where(mask.bool().unsqueeze(-1), logits, 0.0)
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
    return masked_mean(entropy, mask)
