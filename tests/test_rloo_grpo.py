"""Group baselines: RLOO and GRPO advantages."""

import pytest
import torch

from rlhf_lab.rloo_grpo import grpo_advantages, rloo_advantages


def random_rewards(seed: int, prompts: int = 5, k: int = 4) -> torch.Tensor:
    return torch.randn(prompts, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_rloo_equals_an_explicit_leave_one_out_loop():
    rewards = random_rewards(0)
    expected = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        for i in range(rewards.shape[1]):
            others = [rewards[b, j].item() for j in range(rewards.shape[1]) if j != i]
            expected[b, i] = rewards[b, i] - sum(others) / len(others)
    assert torch.allclose(rloo_advantages(rewards), expected)


def test_rloo_is_not_the_plain_mean_baseline():
    # Leaving i out scales the plain-mean advantage by k / (k - 1).
    rewards = random_rewards(1)
    plain = rewards - rewards.mean(dim=1, keepdim=True)
    assert torch.allclose(rloo_advantages(rewards), plain * 4 / 3)


def test_grpo_matches_its_formula():
    rewards = random_rewards(2)
    expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    assert torch.allclose(grpo_advantages(rewards), expected)
    standardised = grpo_advantages(rewards, eps=0.0)
    assert torch.allclose(standardised.std(dim=1), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("advantages_fn", [rloo_advantages, grpo_advantages])
def test_advantages_in_a_group_sum_to_zero(advantages_fn):
    advantages = advantages_fn(random_rewards(3))
    assert torch.allclose(advantages.sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert (advantages.abs() > 1e-3).any()


def test_zero_spread_gives_exactly_zero_never_nan():
    # 0.1 is not exact in binary: the mean of [0.1, 0.1, 0.1] is not exactly 0.1.
    rewards = torch.tensor([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [1.0, 3.0, 2.0]], dtype=torch.float64)
    grpo = grpo_advantages(rewards)
    assert torch.equal(grpo[:2], torch.zeros(2, 3, dtype=torch.float64))
    assert (grpo[2] != 0).any()
    rloo = rloo_advantages(rewards)
    assert not torch.isnan(rloo).any()
    assert torch.allclose(rloo[:2], torch.zeros(2, 3, dtype=torch.float64), atol=1e-12)


def test_grpo_single_answer_groups_give_zero():
    assert torch.equal(grpo_advantages(torch.tensor([[3.0], [-1.0]])), torch.zeros(2, 1))


def test_bad_inputs():
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"\(B prompts, k answers\)"):
        grpo_advantages(torch.zeros(6))
