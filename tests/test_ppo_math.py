"""PPO formulas: GAE, the clipped surrogate, the clipped value loss, and the logged statistics."""

import math

import pytest
import torch

from rlhf_lab.masked import masked_mean
from rlhf_lab.ppo import (
    entropy_from_logits,
    explained_variance,
    gae,
    minibatch_indices,
    ppo_policy_loss,
    ppo_value_loss,
)

# Right padding of varied lengths: 4, 2, 6 and 1 real tokens.
MASK = torch.tensor(
    [
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 0],
    ],
    dtype=torch.float32,
)
LENGTHS = [4, 2, 6, 1]
PADS = MASK == 0


def random_tensor(seed: int, shape=(4, 6)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----- GAE --------------------------------------------------------------------------------------


def gae_reference(rewards, values, lengths, gamma, lam):
    """A straight per-token loop in plain Python floats, one response at a time."""
    advantages = torch.zeros_like(values)
    for row, length in enumerate(lengths):
        advantage_after = 0.0
        for t in reversed(range(length)):
            value_after = values[row, t + 1].item() if t + 1 < length else 0.0
            delta = rewards[row, t].item() + gamma * value_after - values[row, t].item()
            advantage_after = delta + gamma * lam * advantage_after
            advantages[row, t] = advantage_after
    return advantages


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 0.0), (1.0, 1.0)])
def test_gae_matches_a_per_token_loop(gamma, lam):
    rewards, values = random_tensor(0), random_tensor(1)
    advantages, returns = gae(rewards, values, MASK, gamma=gamma, lam=lam)
    expected = gae_reference(rewards, values, LENGTHS, gamma, lam)
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns, (expected + values) * MASK)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards, values = random_tensor(2), random_tensor(3)
    advantages, returns = gae(rewards, values, MASK, gamma=1.0, lam=1.0)
    for row, length in enumerate(LENGTHS):
        reward_to_go = rewards[row, :length].flip(0).cumsum(0).flip(0)
        assert torch.allclose(advantages[row, :length], reward_to_go - values[row, :length])
        # The value target of a Monte-Carlo critic is the reward-to-go itself.
        assert torch.allclose(returns[row, :length], reward_to_go)


def test_gae_lambda_zero_is_the_td_residual():
    gamma = 0.9
    rewards, values = random_tensor(4), random_tensor(5)
    advantages, _ = gae(rewards, values, MASK, gamma=gamma, lam=0.0)
    for row, length in enumerate(LENGTHS):
        next_values = torch.cat([values[row, 1:length], torch.zeros(1, dtype=values.dtype)])
        td_residuals = rewards[row, :length] + gamma * next_values - values[row, :length]
        assert torch.allclose(advantages[row, :length], td_residuals)


def test_gae_does_not_bootstrap_past_the_end():
    # One response of 3 tokens, the rest pads holding a big value: the last real token's
    # advantage must be r - V, with no V_{T} from the pad.
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    values = torch.tensor([[0.2, 0.3, 0.4, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages[0, 2].item() == pytest.approx(1.0 - 0.4)
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("junk", [1e6, float("nan"), float("inf")])
def test_gae_ignores_junk_in_pads(junk):
    rewards, values = random_tensor(6), random_tensor(7)
    clean = gae(rewards, values, MASK)
    dirty = gae(rewards.masked_fill(PADS, junk), values.masked_fill(PADS, -junk), MASK)
    assert torch.equal(clean[0], dirty[0])
    assert torch.equal(clean[1], dirty[1])
    assert torch.equal(clean[0][PADS], torch.zeros(int(PADS.sum()), dtype=torch.float64))


def test_gae_blocks_gradients():
    values = random_tensor(8).requires_grad_()
    advantages, returns = gae(random_tensor(9), values, MASK)
    assert not advantages.requires_grad and not returns.requires_grad


# ----- the clipped surrogate --------------------------------------------------------------------


def test_policy_gradient_at_ratio_one_is_minus_advantage_over_n():
    # d/dlogp of mean(-A ρ) at ρ = 1 is -A / N on real tokens: the REINFORCE gradient.
    old_logprobs = -torch.rand(4, 6, dtype=torch.float64)
    logprobs = old_logprobs.clone().requires_grad_()
    advantages = random_tensor(10)
    loss, _ = ppo_policy_loss(logprobs, old_logprobs, advantages, MASK)
    loss.backward()
    real_count = MASK.sum()
    assert torch.allclose(logprobs.grad, -advantages * MASK / real_count)
    assert torch.allclose(loss, masked_mean(-advantages, MASK))


def test_no_gradient_once_the_ratio_left_the_band_in_the_favoured_direction():
    old_logprobs = torch.full((1, 4), -1.0, dtype=torch.float64)
    # ρ = 1.5 > 1 + ε with A > 0, and ρ = 0.5 < 1 - ε with A < 0: both already clipped.
    log_ratio = torch.tensor([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    advantages = torch.tensor([[2.0, -2.0, -2.0, 2.0]], dtype=torch.float64)
    logprobs = (old_logprobs + log_ratio).requires_grad_()
    loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, torch.ones(1, 4))
    loss.backward()
    gradient = logprobs.grad[0]
    assert gradient[0] == 0  # A > 0, ρ > 1 + ε: clipped
    assert gradient[2] == 0  # A < 0, ρ < 1 - ε: clipped
    # The other direction is never clipped (pessimism): the loss still corrects the mistake.
    assert gradient[1] > 0  # A < 0 and ρ grew: descent lowers logp
    assert gradient[3] < 0  # A > 0 and ρ shrank: descent raises logp
    assert stats["clip_fraction"] == pytest.approx(0.5)


def test_policy_loss_equals_a_transcription_of_the_formula():
    old_logprobs = -torch.rand(4, 6, dtype=torch.float64)
    logprobs = old_logprobs + 0.3 * random_tensor(11)
    advantages = random_tensor(12)
    loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, MASK, clip_eps=0.1)
    ratio = torch.exp(logprobs - old_logprobs)
    per_token = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.9, 1.1))
    real = MASK.bool()
    assert torch.allclose(loss, per_token[real].mean())
    expected_kl = ((ratio - 1) - torch.log(ratio))[real].mean()
    assert stats["approx_kl"] == pytest.approx(expected_kl.item())
    assert stats["approx_kl"] > 0
    assert stats["ratio_mean"] == pytest.approx(ratio[real].mean().item())


def test_first_minibatch_stats_ratio_one_no_clip_no_kl():
    old_logprobs = -torch.rand(4, 6)
    loss, stats = ppo_policy_loss(old_logprobs.clone(), old_logprobs, torch.randn(4, 6), MASK)
    assert stats == {"clip_fraction": 0.0, "approx_kl": 0.0, "ratio_mean": 1.0}


@pytest.mark.parametrize("junk", [1e6, float("nan")])
def test_policy_loss_ignores_junk_in_pads(junk):
    old_logprobs = -torch.rand(4, 6, dtype=torch.float64)
    advantages = random_tensor(13)
    clean_logprobs = (old_logprobs + 0.3 * random_tensor(14)).requires_grad_()
    dirty_logprobs = clean_logprobs.detach().masked_fill(PADS, junk).requires_grad_()
    clean_loss, clean_stats = ppo_policy_loss(clean_logprobs, old_logprobs, advantages, MASK)
    dirty_loss, dirty_stats = ppo_policy_loss(
        dirty_logprobs, old_logprobs.masked_fill(PADS, -junk), advantages.masked_fill(PADS, junk), MASK
    )
    assert torch.equal(clean_loss, dirty_loss)
    assert clean_stats == dirty_stats
    clean_loss.backward()
    dirty_loss.backward()
    assert torch.equal(clean_logprobs.grad, dirty_logprobs.grad)
    assert torch.equal(dirty_logprobs.grad[PADS], torch.zeros(int(PADS.sum()), dtype=torch.float64))


# ----- the clipped value loss -------------------------------------------------------------------


def test_value_loss_inside_the_band_is_half_squared_error():
    old_values, returns = random_tensor(15), random_tensor(16)
    values = (old_values + 0.1 * torch.rand(4, 6, dtype=torch.float64)).requires_grad_()  # within ±0.2
    loss, stats = ppo_value_loss(values, old_values, returns, MASK)
    loss.backward()
    assert torch.allclose(loss, 0.5 * masked_mean((values - returns) ** 2, MASK))
    assert torch.allclose(values.grad, (values - returns).detach() * MASK / MASK.sum())
    assert stats["value_clip_fraction"] == 0.0


def test_value_loss_clipped_branch_only_when_value_leaves_the_band():
    old_values = torch.zeros(1, 3, dtype=torch.float64)
    # Token 0: V = 1 left the band towards R = 2: clipped V = 0.2 is farther from R, so the
    #          clipped branch is active and V gets no gradient.
    # Token 1: V = 1 left the band away from R = 0: unclipped error is larger, it stays active.
    # Token 2: V = 0.1 inside the band: plain squared error.
    values = torch.tensor([[1.0, 1.0, 0.1]], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
    loss, stats = ppo_value_loss(values, old_values, returns, torch.ones(1, 3), clip_eps=0.2)
    loss.backward()
    expected_per_token = torch.tensor([(0.2 - 2.0) ** 2, (1.0 - 0.0) ** 2, (0.1 - 1.0) ** 2], dtype=torch.float64)
    assert loss.item() == pytest.approx(0.5 * expected_per_token.mean().item())
    assert values.grad[0, 0] == 0
    assert values.grad[0, 1].item() == pytest.approx((1.0 - 0.0) / 3)
    assert values.grad[0, 2].item() == pytest.approx((0.1 - 1.0) / 3)
    assert stats["value_clip_fraction"] == pytest.approx(1 / 3)


def test_value_loss_ignores_junk_in_pads():
    old_values, returns, values = random_tensor(17), random_tensor(18), random_tensor(19)
    clean, _ = ppo_value_loss(values, old_values, returns, MASK)
    dirty, _ = ppo_value_loss(
        values.masked_fill(PADS, float("nan")), old_values.masked_fill(PADS, 1e9), returns.masked_fill(PADS, -1e9), MASK
    )
    assert torch.equal(clean, dirty)


# ----- logged statistics ------------------------------------------------------------------------


def test_explained_variance():
    returns = random_tensor(20)
    assert explained_variance(returns.clone(), returns, MASK).item() == pytest.approx(1.0)
    real_mean = masked_mean(returns, MASK)
    constant = torch.full_like(returns, real_mean.item())
    assert explained_variance(constant, returns, MASK).item() == pytest.approx(0.0, abs=1e-9)
    noisy = returns + random_tensor(21)
    real = MASK.bool()
    expected = 1 - (returns - noisy)[real].var() / returns[real].var()
    assert explained_variance(noisy, returns, MASK).item() == pytest.approx(expected.item())
    junk_values = noisy.masked_fill(PADS, float("nan"))
    assert explained_variance(junk_values, returns, MASK).item() == pytest.approx(expected.item())
    assert math.isnan(explained_variance(noisy, torch.ones_like(returns), MASK).item())


def test_entropy_from_logits():
    vocab = 5
    uniform = torch.zeros(4, 6, vocab)
    assert entropy_from_logits(uniform, MASK).item() == pytest.approx(math.log(vocab))
    peaked = torch.full((4, 6, vocab), -1e4)
    peaked[..., 0] = 0.0
    assert entropy_from_logits(peaked, MASK).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(4, 6, vocab, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, -1)
    per_token = -(probs * probs.log()).sum(-1)
    assert entropy_from_logits(logits, MASK).item() == pytest.approx(per_token[MASK.bool()].mean().item(), rel=1e-5)
    # Pads with junk: same value, and no NaN leaks into the gradient.
    dirty = logits.masked_fill(PADS.unsqueeze(-1), float("nan")).requires_grad_()
    entropy = entropy_from_logits(dirty, MASK)
    assert entropy.item() == pytest.approx(per_token[MASK.bool()].mean().item(), rel=1e-5)
    entropy.backward()
    assert torch.isfinite(dirty.grad).all()


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="`mask`"):
        gae(torch.zeros(4, 6), torch.zeros(4, 6), torch.ones(4, 5))
    with pytest.raises(ValueError, match="`advantages`"):
        ppo_policy_loss(torch.zeros(4, 6), torch.zeros(4, 6), torch.zeros(4), MASK)
    with pytest.raises(ValueError, match="`mask` needs shape"):
        entropy_from_logits(torch.zeros(4, 6, 3), torch.ones(4, 5))


def test_minibatches_cover_every_row_once_per_epoch_in_a_fresh_order():
    minibatches = list(minibatch_indices(10, 4, 3, torch.Generator().manual_seed(0)))
    assert [len(index) for index in minibatches] == [4, 4, 2] * 3
    epochs = [sum(minibatches[i:i + 3], []) for i in (0, 3, 6)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2], "a fresh permutation each epoch (rule 12)"
