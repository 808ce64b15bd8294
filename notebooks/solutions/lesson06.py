"""Lesson 06 (KL and reward hacking): model solutions to the exercises.

Each function can be pasted into the exercise's stub cell as it is.
"""

import torch


def my_adaptive_kl_update(beta: float, kl: float, target: float, horizon: float, n_steps: int) -> float:
    """One update of the adaptive KL coefficient β (Ziegler et al., 2019).

        e     = clip(kl / target - 1, -0.2, 0.2)
        new β = β · (1 + e · n_steps / horizon)

    kl: the KL measured on the last batch; n_steps: how many samples that batch had.
    """
    error = min(max(kl / target - 1, -0.2), 0.2)  # the clip bounds how far one batch moves β
    return beta * (1 + error * n_steps / horizon)


def my_kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π ‖ π_ref), per sampled token: unbiased and never negative.

        r  = π_ref(y) / π(y) = exp(ref_logprobs - logprobs)
        k3 = (r - 1) - log r

    logprobs, ref_logprobs: (B, T) log-probs of the sampled tokens. Returns (B, T).
    """
    log_ratio = ref_logprobs - logprobs
    # expm1(x) = e^x - 1 without rounding error when x is tiny, where r - 1 and log r nearly cancel.
    return torch.expm1(log_ratio) - log_ratio
