"""Means, variances and whitening over real tokens only.

A batch of responses has different lengths, so it is padded into a rectangle. Every statistic in
RLHF (mean KL, the loss, advantage whitening) must ignore the padding: a pad slot may hold any junk
(even NaN) and the result must not change. These helpers take a `mask` with 1 (or True) on real
tokens and 0 on pads, and read the values only where the mask is 1.

We select with `torch.where` rather than multiplying by the mask: `nan * 0` is still NaN, while
`torch.where(mask, x, 0)` never looks at the pad values, in the forward or the backward pass.
"""

import torch
from torch import Tensor


def check_same_shape(function_name: str, **tensors: Tensor) -> None:
    """Raise a ValueError naming the function and the arguments whose shapes disagree.

    Broadcasting would silently turn a (B,) tensor against a (B, T) tensor into nonsense, so the
    formulas insist that per-token tensors have exactly the same shape.
    """
    names = list(tensors)
    first_name = names[0]
    first_shape = tuple(tensors[first_name].shape)
    for name in names[1:]:
        shape = tuple(tensors[name].shape)
        if shape != first_shape:
            raise ValueError(
                f"{function_name}: `{name}` has shape {shape} but `{first_name}` has shape "
                f"{first_shape}; they must match"
            )


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over real tokens: sum_t m_t x_t. Pad slots (mask 0) are never read.

    With `dim=1` it gives one sum per row: e.g. a response's log-prob, log π(y) = sum_t log π(y_t),
    or its summed KL.
    """
    check_same_shape("masked_sum", x=x, mask=mask)
    return torch.where(mask.bool(), x, 0.0).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over real tokens: sum_t m_t x_t / sum_t m_t.

    With `dim=None` the mean runs over every real token of the batch (a scalar); with `dim=1` it
    gives one mean per row. Pad slots (mask 0) are never read.
    """
    check_same_shape("masked_mean", x=x, mask=mask)
    real_sum = masked_sum(x, mask, dim)
    real_count = mask.bool().sum(dim=dim)
    # A mean over no tokens is undefined; silently returning NaN (or 0) would hide the bug
    # that produced an empty row.
    if (real_count == 0).any():
        where = "the mask" if dim is None else f"some row of the mask (along dim {dim})"
        raise ValueError(f"masked_mean: {where} has no real tokens (all zeros)")
    return real_sum / real_count


def weighted_mean(x: Tensor, weights: Tensor | None, function_name: str = "weighted_mean") -> Tensor:
    """Mean of per-pair losses, each counting w_i times: sum_i w_i x_i / sum_i w_i.

    `weights=None` is the plain mean (and `masked_mean` is the case of 0/1 weights). Used to let a
    learner's own preference labels count more than simulated ones, in the reward model's and in DPO's loss alike.
    """
    if weights is None:
        return x.mean()
    check_same_shape(function_name, losses=x, weights=weights)
    if (weights < 0).any():
        raise ValueError(f"{function_name}: `weights` must be >= 0")
    total_weight = weights.sum()
    if total_weight <= 0:
        raise ValueError(f"{function_name}: `weights` sum to 0, so no pair counts")
    return (weights * x).sum() / total_weight


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all real tokens of the batch (a scalar).

        var = sum_t m_t (x_t - mean)^2 / (N - 1)   with N = sum_t m_t   (unbiased)
        var = sum_t m_t (x_t - mean)^2 / N                               (unbiased=False)
    """
    mean = masked_mean(x, mask)
    squared_deviation = (x - mean) ** 2
    variance = masked_mean(squared_deviation, mask)
    if unbiased:
        real_count = mask.bool().sum()
        if real_count < 2:
            raise ValueError("masked_var: the unbiased variance needs at least 2 real tokens")
        # Bessel's correction: turn the 1/N average into a 1/(N - 1) one.
        variance = variance * real_count / (real_count - 1)
    return variance


def masked_whiten(x: Tensor, mask: Tensor) -> Tensor:
    """Whiten `x` over real tokens: (x - mean) / sqrt(var + 1e-8), pads set to 0.

    The mean and (unbiased) variance come from real tokens only, so after whitening the real
    tokens have mean 0 and standard deviation 1.
    """
    mean = masked_mean(x, mask)
    variance = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(variance + 1e-8)
    return torch.where(mask.bool(), whitened, 0.0)
