"""Masked statistics: pads never count, whatever junk they hold."""

import pytest
import torch

from rlhf_lab.masked import check_same_shape, masked_mean, masked_var, masked_whiten

# Right padding of varied lengths: 4, 2, 5 and 1 real tokens.
MASK = torch.tensor(
    [
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
    ],
    dtype=torch.float32,
)


def real_values(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The real entries as a flat tensor, the slow obvious way."""
    return torch.stack([x[i, j] for i in range(x.shape[0]) for j in range(x.shape[1]) if mask[i, j] == 1])


def with_junk(x: torch.Tensor, mask: torch.Tensor, junk: float) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.full_like(x, junk))


def test_masked_mean_matches_mean_of_real_entries():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(masked_mean(x, MASK), real_values(x, MASK).mean())


def test_masked_mean_per_row():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([x[i, : int(MASK[i].sum())].mean() for i in range(4)])
    assert torch.allclose(masked_mean(x, MASK, dim=1), expected)


def test_bool_and_float_masks_agree():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(masked_mean(x, MASK), masked_mean(x, MASK.bool()))


@pytest.mark.parametrize("junk", [1e6, -3.0, float("nan"), float("inf")])
def test_junk_in_pads_changes_nothing(junk):
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    dirty = with_junk(x, MASK, junk)
    assert torch.equal(masked_mean(dirty, MASK), masked_mean(x, MASK))
    assert torch.equal(masked_mean(dirty, MASK, dim=1), masked_mean(x, MASK, dim=1))
    assert torch.equal(masked_var(dirty, MASK), masked_var(x, MASK))
    assert torch.equal(masked_whiten(dirty, MASK), masked_whiten(x, MASK))


def test_junk_in_pads_gets_no_gradient():
    x = with_junk(torch.randn(4, 5), MASK, float("nan")).requires_grad_()
    masked_mean(x, MASK).backward()
    assert torch.equal(x.grad, MASK / MASK.sum())


def test_masked_var_matches_torch_var_of_real_entries():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(4))
    real = real_values(x, MASK)
    assert torch.allclose(masked_var(x, MASK), real.var(correction=1))
    assert torch.allclose(masked_var(x, MASK, unbiased=False), real.var(correction=0))


def test_whiten_gives_mean_zero_std_one_on_real_tokens_and_zero_pads():
    x = 3.0 + 5.0 * torch.randn(4, 5, generator=torch.Generator().manual_seed(5))
    whitened = masked_whiten(x, MASK)
    real = real_values(whitened, MASK)
    assert real.mean().abs() < 1e-6
    assert torch.allclose(real.std(), torch.tensor(1.0), atol=1e-5)
    assert torch.equal(whitened[MASK == 0], torch.zeros(int((MASK == 0).sum())))
    # Whitening is an affine map of the real values: the order of tokens is kept.
    assert torch.equal(real.argsort(), real_values(x, MASK).argsort())


def test_whiten_differs_from_unmasked_whitening():
    # Guards against a version that quietly whitens over the whole rectangle.
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(7))
    unmasked = (x - x.mean()) / x.std()
    assert not torch.allclose(masked_whiten(x, MASK)[MASK.bool()], unmasked[MASK.bool()], atol=1e-3)


def test_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="no real tokens"):
        masked_mean(torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="some row"):
        masked_mean(torch.ones(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), dim=1)
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.ones(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_shape_mismatch_names_the_arguments():
    with pytest.raises(ValueError, match=r"masked_mean: `mask` has shape \(4, 4\) but `x` has shape \(4, 5\)"):
        masked_mean(torch.ones(4, 5), torch.ones(4, 4))
    with pytest.raises(ValueError, match="`b`"):
        check_same_shape("f", a=torch.ones(3), b=torch.ones(3, 1))
