"""KL divergence to the reference model: per-token estimators, the KL-penalised reward, and β.

RLHF keeps the policy π close to the frozen reference π_ref (the SFT model) by paying a price for
KL(π ‖ π_ref). We only see sampled tokens y ~ π, so the KL is estimated from the log-probs of those
tokens. With the ratio r = π_ref(y) / π(y), we use two of Schulman's estimators (per token):

    k1 = -log r                 unbiased, but a single sample can be negative
    k3 = (r - 1) - log r        unbiased and always >= 0

(His note, "Approximating KL Divergence", 2020, also has k2 = ½ (log r)^2: never negative and
low-variance, but biased. Rule 14 of docs/implementation_rules.md.)
"""

import torch
from torch import Tensor

from rlhf_lab.masked import check_same_shape


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = -log r = log π(y) - log π_ref(y), per token."""
    check_same_shape("kl_k1", logprobs=logprobs, ref_logprobs=ref_logprobs)
    return logprobs - ref_logprobs


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r - 1) - log r with r = π_ref(y) / π(y), per token."""
    check_same_shape("kl_k3", logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs - logprobs
    # expm1(x) = exp(x) - 1 without the rounding error of exp(x) - 1 when x is tiny, where the
    # two terms nearly cancel.
    return torch.expm1(log_ratio) - log_ratio


def kl_penalised_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    beta: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: a KL penalty on every token, plus the score on the last real one.

        kl_t = log π(y_t) - log π_ref(y_t)                       (k1, on real tokens)
        r_t  = -β kl_t  +  score · [t is the last real token]     (0 on pads)

    so that for each row  sum_t r_t = score - β sum_t kl_t.

    Args:
        scores: (B,) reward-model score of each whole response.
        logprobs, ref_logprobs: (B, T) log-probs of the sampled response tokens under the policy
            and the reference model.
        mask: (B, T) 1 on real response tokens (up to and including the end token), 0 on pads.
        beta: the KL coefficient β.

    Returns:
        rewards: (B, T) per-token rewards, 0 on pads.
        kl: (B, T) per-token k1, 0 on pads.
    """
    check_same_shape("kl_penalised_rewards", logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(
            f"kl_penalised_rewards: `scores` has shape {tuple(scores.shape)} but needs one score "
            f"per row, shape ({logprobs.shape[0]},)"
        )
    real = mask.bool()
    if not real.any(dim=1).all():
        raise ValueError("kl_penalised_rewards: some row of `mask` has no real tokens")

    kl = torch.where(real, kl_k1(logprobs, ref_logprobs), 0.0)
    rewards = -beta * kl

    # The score belongs to the last real token (the end token). Taking it from the mask, not
    # from the row length, also works when a row is padded on the left.
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(real)
    last_real_position = torch.where(real, positions, -1).max(dim=1).values
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_real_position] += scores.to(rewards.dtype)
    return rewards, kl


class AdaptiveKLController:
    """Adapt β so that the measured KL drifts towards a target (Ziegler et al., 2019).

        e = clip(KL / target - 1, -0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    KL is the batch mean of the per-sequence summed k1, and n_steps how many samples (or steps)
    the measurement covers. The clip bounds one update: β changes by at most a factor
    1 ± 0.2 · n_steps / horizon, however wild one batch is.

    The classic constants for GPT-2 on text (lm-human-preferences) are target = 6 nats,
    horizon = 10000 and β0 = 0.15; a tiny world with short responses needs them scaled down,
    which the trainer does.
    """

    def __init__(self, init_beta: float, target: float, horizon: float) -> None:
        if init_beta < 0:
            raise ValueError(f"AdaptiveKLController: init_beta must be >= 0, got {init_beta}")
        if target <= 0:
            raise ValueError(f"AdaptiveKLController: target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"AdaptiveKLController: horizon must be > 0, got {horizon}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """Move β after a batch that measured `current_kl` over `n_steps`; return the new β."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + proportional_error * n_steps / self.horizon
        return self.beta


class FixedKLController:
    """A constant β, with the same interface as `AdaptiveKLController`."""

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"FixedKLController: beta must be >= 0, got {beta}")
        self.beta = float(beta)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """β stays as it is; return it."""
        return self.beta
