"""The Bradley-Terry loss and probability."""

import math

import pytest
import torch

from rlhf_lab.reward import bradley_terry_loss, bradley_terry_probability


def test_equal_rewards_give_log_two():
    rewards = torch.randn(8)
    assert bradley_terry_loss(rewards, rewards.clone()).item() == pytest.approx(math.log(2))
    assert torch.allclose(bradley_terry_probability(rewards, rewards.clone()), torch.full((8,), 0.5))


def test_loss_is_invariant_to_a_shared_shift():
    generator = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(16, generator=generator), torch.randn(16, generator=generator)
    shift = torch.randn(16, generator=generator) * 10  # a per-pair shift, shared by both answers
    assert torch.allclose(bradley_terry_loss(chosen, rejected), bradley_terry_loss(chosen + shift, rejected + shift))


def test_loss_equals_the_transcribed_formula():
    generator = torch.Generator().manual_seed(1)
    chosen = torch.randn(16, generator=generator, dtype=torch.float64)
    rejected = torch.randn(16, generator=generator, dtype=torch.float64)
    expected = -torch.log(torch.sigmoid(chosen - rejected)).mean()
    assert torch.allclose(bradley_terry_loss(chosen, rejected), expected)
    # The order matters: swapping chosen and rejected is a different (larger here) loss.
    assert not torch.allclose(bradley_terry_loss(rejected, chosen), expected)


def test_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.zeros(3, requires_grad=True)
    rejected = torch.zeros(3, requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    assert torch.allclose(chosen.grad, torch.full((3,), -0.5 / 3))
    assert torch.allclose(rejected.grad, torch.full((3,), 0.5 / 3))


def test_loss_is_stable_for_huge_margins():
    chosen = torch.tensor([-1000.0, 1000.0])
    rejected = torch.tensor([0.0, 0.0])
    loss = bradley_terry_loss(chosen, rejected)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(1000.0 / 2)


def test_weights():
    generator = torch.Generator().manual_seed(2)
    chosen, rejected = torch.randn(6, generator=generator), torch.randn(6, generator=generator)
    assert torch.allclose(bradley_terry_loss(chosen, rejected, torch.ones(6)), bradley_terry_loss(chosen, rejected))
    # Weight 0 drops a pair; weight 2 counts a pair twice.
    weights = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 0.0])
    duplicated = [0, 2, 2, 3, 4]
    assert torch.allclose(
        bradley_terry_loss(chosen, rejected, weights),
        bradley_terry_loss(chosen[duplicated], rejected[duplicated]),
    )
    # Only the ratios of the weights matter.
    assert torch.allclose(
        bradley_terry_loss(chosen, rejected, weights), bradley_terry_loss(chosen, rejected, 5 * weights)
    )


def test_bad_weights_and_shapes_are_errors():
    chosen, rejected = torch.zeros(3), torch.zeros(3)
    with pytest.raises(ValueError, match=">= 0"):
        bradley_terry_loss(chosen, rejected, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="sum to 0"):
        bradley_terry_loss(chosen, rejected, torch.zeros(3))
    with pytest.raises(ValueError, match="`weights`"):
        bradley_terry_loss(chosen, rejected, torch.ones(2))
    with pytest.raises(ValueError, match="`rejected_rewards`"):
        bradley_terry_loss(chosen, torch.zeros(3, 1))


def test_probability():
    r_a = torch.tensor([2.0, -1.0, 0.3])
    r_b = torch.tensor([1.0, 1.0, 0.3])
    p = bradley_terry_probability(r_a, r_b)
    assert torch.allclose(p, 1 / (1 + torch.exp(-(r_a - r_b))))
    assert torch.allclose(p + bradley_terry_probability(r_b, r_a), torch.ones(3))
    # The loss is the negative log of this probability for the chosen answer.
    assert torch.allclose(bradley_terry_loss(r_a, r_b), -p.log().mean())
