"""KL estimators, the KL-penalised reward and the β controllers."""

import math

import pytest
import torch

from rlhf_lab.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k3,
    kl_penalised_rewards,
)


def random_categoricals(seed: int, vocab: int = 7, sharpness: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    policy_logprobs = torch.log_softmax(sharpness * torch.randn(vocab, generator=generator, dtype=torch.float64), 0)
    ref_logprobs = torch.log_softmax(sharpness * torch.randn(vocab, generator=generator, dtype=torch.float64), 0)
    return policy_logprobs, ref_logprobs


def exact_kl(policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(π ‖ π_ref) = sum_y π(y) log(π(y) / π_ref(y)), by enumeration."""
    return (policy_logprobs.exp() * (policy_logprobs - ref_logprobs)).sum()


def expectation_under_policy(per_token: torch.Tensor, policy_logprobs: torch.Tensor) -> torch.Tensor:
    """E_{y ~ π}[f(y)] exactly: every outcome y of the categorical weighted by π(y)."""
    return (policy_logprobs.exp() * per_token).sum()


# ----- the estimators on exact distributions --------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_k1_and_k3_are_unbiased(seed):
    policy_logprobs, ref_logprobs = random_categoricals(seed, sharpness=1.5)
    true_kl = exact_kl(policy_logprobs, ref_logprobs)
    assert true_kl > 0.05  # a real difference, so the test can tell estimators apart
    for estimator in (kl_k1, kl_k3):
        estimate = expectation_under_policy(estimator(policy_logprobs, ref_logprobs), policy_logprobs)
        assert torch.allclose(estimate, true_kl, atol=1e-10), estimator.__name__


def test_estimators_against_their_formulas():
    logprobs = torch.tensor([-0.5, -2.0, -1.0], dtype=torch.float64)
    ref_logprobs = torch.tensor([-1.5, -1.0, -1.0], dtype=torch.float64)
    ratio = torch.exp(ref_logprobs - logprobs)  # r = π_ref / π
    assert torch.allclose(kl_k1(logprobs, ref_logprobs), -torch.log(ratio))
    assert torch.allclose(kl_k3(logprobs, ref_logprobs), (ratio - 1) - torch.log(ratio))


def test_k3_is_never_negative_but_k1_can_be():
    generator = torch.Generator().manual_seed(0)
    logprobs = -5 * torch.rand(1000, generator=generator)
    ref_logprobs = -5 * torch.rand(1000, generator=generator)
    assert (kl_k3(logprobs, ref_logprobs) >= 0).all()
    assert (kl_k1(logprobs, ref_logprobs) < 0).any()


def test_all_estimators_are_zero_for_identical_policies():
    logprobs = -5 * torch.rand(3, 8, generator=torch.Generator().manual_seed(0))
    for estimator in (kl_k1, kl_k3):
        assert torch.equal(estimator(logprobs, logprobs.clone()), torch.zeros(3, 8)), estimator.__name__


# ----- the KL-penalised reward --------------------------------------------------------------

# Right padding of varied lengths: 3, 5, 1 and 4 real tokens.
MASK = torch.tensor(
    [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0],
    ],
    dtype=torch.float32,
)
LAST_REAL = [2, 4, 0, 3]


def rollout(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, generator=generator)
    logprobs = -3 * torch.rand(4, 5, generator=generator)
    ref_logprobs = -3 * torch.rand(4, 5, generator=generator)
    return scores, logprobs, ref_logprobs


def test_rewards_sum_to_score_minus_beta_times_kl():
    scores, logprobs, ref_logprobs = rollout()
    beta = 0.3
    rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, MASK, beta)
    summed_kl = ((logprobs - ref_logprobs) * MASK).sum(dim=1)
    assert torch.allclose(rewards.sum(dim=1), scores - beta * summed_kl, atol=1e-6)
    assert torch.allclose(kl.sum(dim=1), summed_kl, atol=1e-6)


def test_score_sits_at_the_last_real_token():
    scores, logprobs, ref_logprobs = rollout(1)
    beta = 0.3
    rewards, kl = kl_penalised_rewards(scores, logprobs, ref_logprobs, MASK, beta)
    score_part = rewards + beta * kl  # what is left after removing the KL penalty
    for row, last in enumerate(LAST_REAL):
        expected = torch.zeros(5)
        expected[last] = scores[row]
        assert torch.allclose(score_part[row], expected, atol=1e-6), row
    # Pads get nothing at all: neither penalty nor score.
    assert torch.equal(rewards[MASK == 0], torch.zeros(int((MASK == 0).sum())))
    assert torch.equal(kl[MASK == 0], torch.zeros(int((MASK == 0).sum())))


def test_score_position_comes_from_the_mask_also_with_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    scores = torch.tensor([5.0, 7.0])
    logprobs = torch.zeros(2, 4)
    rewards, _ = kl_penalised_rewards(scores, logprobs, logprobs.clone(), mask, beta=0.1)
    assert torch.equal(rewards, torch.tensor([[0.0, 0, 0, 5], [0, 0, 0, 7]]))


def test_junk_in_pads_changes_nothing():
    scores, logprobs, ref_logprobs = rollout(2)
    pads = MASK == 0
    dirty_logprobs = logprobs.masked_fill(pads, float("nan"))
    dirty_ref = ref_logprobs.masked_fill(pads, -1e9)
    clean = kl_penalised_rewards(scores, logprobs, ref_logprobs, MASK, 0.2)
    dirty = kl_penalised_rewards(scores, dirty_logprobs, dirty_ref, MASK, 0.2)
    assert torch.equal(clean[0], dirty[0])
    assert torch.equal(clean[1], dirty[1])


def test_bad_shapes_are_named():
    scores, logprobs, ref_logprobs = rollout()
    with pytest.raises(ValueError, match="`scores`"):
        kl_penalised_rewards(scores[:2], logprobs, ref_logprobs, MASK, 0.1)
    with pytest.raises(ValueError, match="`mask`"):
        kl_penalised_rewards(scores, logprobs, ref_logprobs, MASK[:, :3], 0.1)
    with pytest.raises(ValueError, match="no real tokens"):
        kl_penalised_rewards(scores, logprobs, ref_logprobs, MASK * torch.tensor([[1.0], [1], [0], [1]]), 0.1)


# ----- β controllers --------------------------------------------------------------------------


def test_adaptive_kl_at_target_leaves_beta_unchanged():
    controller = AdaptiveKLController(init_beta=0.15, target=6.0, horizon=10000)
    assert controller.update(6.0, n_steps=256) == 0.15
    assert controller.beta == 0.15


def test_adaptive_kl_huge_kl_grows_beta_by_at_most_the_clip():
    controller = AdaptiveKLController(init_beta=0.15, target=6.0, horizon=10000)
    controller.update(1e6, n_steps=256)
    assert controller.beta == pytest.approx(0.15 * (1 + 0.2 * 256 / 10000))


def test_adaptive_kl_small_kl_shrinks_beta_by_at_most_the_clip():
    controller = AdaptiveKLController(init_beta=0.15, target=6.0, horizon=10000)
    controller.update(0.0, n_steps=256)
    assert controller.beta == pytest.approx(0.15 * (1 - 0.2 * 256 / 10000))
    assert controller.beta < 0.15


def test_adaptive_kl_proportional_inside_the_clip():
    controller = AdaptiveKLController(init_beta=0.1, target=2.0, horizon=100)
    controller.update(torch.tensor(2.2), n_steps=10)  # 10% over target, tensors accepted
    assert controller.beta == pytest.approx(0.1 * (1 + 0.1 * 10 / 100))
    controller.update(1.8, n_steps=10)  # then 10% under
    assert controller.beta == pytest.approx(0.1 * (1 + 0.1 * 10 / 100) * (1 - 0.1 * 10 / 100))


def test_adaptive_kl_drifts_toward_target_over_many_updates():
    controller = AdaptiveKLController(init_beta=1.0, target=1.0, horizon=100)
    for _ in range(50):
        controller.update(3.0, n_steps=10)
    assert controller.beta == pytest.approx((1 + 0.2 * 10 / 100) ** 50)
    assert math.isfinite(controller.beta)


def test_fixed_kl_controller_never_moves():
    controller = FixedKLController(beta=0.05)
    assert controller.update(1e6, n_steps=1000) == 0.05
    assert controller.update(0.0, n_steps=1000) == 0.05


def test_controllers_reject_bad_constants():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(init_beta=0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(init_beta=0.1, target=1.0, horizon=0)
    with pytest.raises(ValueError, match="beta"):
        FixedKLController(beta=-1.0)
