"""The DPO loss and sequence log-probs."""

import math

import pytest
import torch

from rlhf_lab.dpo import dpo_loss, sequence_logprob


def random_logps(seed: int, size: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [-20 * torch.rand(size, generator=generator, dtype=torch.float64) for _ in range(4)]


def test_policy_equal_to_reference_gives_log_two_and_zero_rewards():
    chosen, rejected, _, _ = random_logps(0)
    loss, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert torch.equal(chosen_rewards, torch.zeros(8, dtype=torch.float64))
    assert torch.equal(rejected_rewards, torch.zeros(8, dtype=torch.float64))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_equals_a_transcription_of_the_formula(beta):
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = random_logps(1)
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    expected = (-torch.log(torch.sigmoid(margin))).mean()
    assert torch.allclose(loss, expected)
    assert torch.allclose(chosen_rewards, beta * (policy_chosen - ref_chosen))
    assert torch.allclose(rejected_rewards, beta * (policy_rejected - ref_rejected))


def test_gradient_pushes_chosen_up_and_rejected_down():
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = random_logps(2)
    policy_chosen.requires_grad_()
    policy_rejected.requires_grad_()
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.1)
    loss.backward()
    assert (policy_chosen.grad < 0).all()  # gradient descent raises log π(y_w)
    assert (policy_rejected.grad > 0).all()  # and lowers log π(y_l)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad


def test_one_gradient_step_increases_the_reward_margin():
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = random_logps(3)
    policy_chosen.requires_grad_()
    policy_rejected.requires_grad_()
    loss, chosen_before, rejected_before = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.1)
    loss.backward()
    with torch.no_grad():
        new_chosen = policy_chosen - 1.0 * policy_chosen.grad
        new_rejected = policy_rejected - 1.0 * policy_rejected.grad
    new_loss, chosen_after, rejected_after = dpo_loss(new_chosen, new_rejected, ref_chosen, ref_rejected, 0.1)
    assert new_loss < loss
    assert ((chosen_after - rejected_after) > (chosen_before - rejected_before)).all()


def test_sequence_logprob_sums_real_tokens_only():
    token_logprobs = torch.tensor([[-1.0, -2.0, -3.0, float("nan")], [-0.5, -9.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert torch.equal(sequence_logprob(token_logprobs, mask), torch.tensor([-6.0, -0.5]))


def test_shapes_are_checked():
    a = torch.zeros(4)
    with pytest.raises(ValueError, match="`ref_rejected_logps`"):
        dpo_loss(a, a, a, torch.zeros(4, 1), 0.1)
    with pytest.raises(ValueError, match="`mask`"):
        sequence_logprob(torch.zeros(2, 3), torch.ones(2, 4))


def test_a_pair_of_weight_two_counts_like_the_same_pair_twice():
    """The learner's own labels count `learner_weight` times in DPO, as in the reward model."""
    generator = torch.Generator().manual_seed(0)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = torch.randn(4, 3, generator=generator)
    weights = torch.tensor([2.0, 1.0, 1.0])
    weighted, _, _ = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.1, weights)
    doubled = [torch.cat([t[:1], t]) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)]
    repeated, _, _ = dpo_loss(*doubled, 0.1)
    assert torch.allclose(weighted, repeated)
    unweighted, _, _ = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.1)
    assert not torch.allclose(weighted, unweighted)
    with pytest.raises(ValueError, match=">= 0"):
        dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, 0.1, -weights)
