"""The RLOO / GRPO trainer on the shipped nano SFT policy: the RLOO/GRPO rules on live rollouts."""

import copy

import pytest
import torch
from world_questions import WORLD_QUESTIONS as PROMPTS

from rlhf_lab import reward, rloo_grpo
from rlhf_lab.kl import kl_k1

pytestmark = pytest.mark.slow  # every test here samples or trains


@pytest.fixture
def models(sft):
    policy, tokenizer = sft
    torch.manual_seed(0)
    reward_model = reward.RewardModel.from_policy(policy)  # a random head: any scores will do here
    return policy, tokenizer, reward_model


def make_trainer(models, method: str = "rloo", **overrides) -> rloo_grpo.GroupTrainer:
    policy, tokenizer, reward_model = models
    settings = dict(method=method, iterations=2, prompts_per_iteration=4, group_size=4, minibatch_size=8, epochs=2,
                    max_new_tokens=12, seed=0)
    cfg = rloo_grpo.GroupConfig(**{**settings, **overrides})
    return rloo_grpo.GroupTrainer(copy.deepcopy(policy), copy.deepcopy(policy), reward_model, tokenizer, PROMPTS, cfg)


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_groups_are_neighbouring_answers_to_one_prompt_and_their_advantages_sum_to_zero(models, method):
    trainer = make_trainer(models, method)
    batch = trainer.rollout(PROMPTS[:4])
    assert batch.prompts == [q for q in PROMPTS[:4] for _ in range(4)]
    rewards = group_rewards(trainer, batch)
    group_sums = batch.answer_advantages.view(4, 4).sum(dim=1)
    # In exact arithmetic each sum is 0. In float32, each of the k terms R_i - mean carries a
    # rounding error of a few ulps of the largest |R| in the group, and GRPO then divides by the
    # group's spread (std + ε), which amplifies it when the answers score alike. So the tolerance
    # is a few ulps of the terms, scaled like the advantages themselves -- not one CPU's result.
    k, ulp = 4, torch.finfo(torch.float32).eps
    spread = rewards.std(dim=1) + 1e-4 if method == "grpo" else torch.ones(4)
    tolerance = 4 * k * ulp * rewards.abs().amax(dim=1) / spread
    assert (group_sums.abs() <= tolerance).all(), (group_sums, tolerance)
    # Every real token of an answer carries its answer's advantage; pads carry 0.
    mask = batch.mask.bool()
    expected = torch.where(mask, batch.answer_advantages[:, None], 0.0)
    assert torch.equal(batch.advantages, expected)


def penalised_scores(trainer, batch) -> torch.Tensor:
    return torch.where(batch.finished, batch.scores, batch.scores + trainer.cfg.missing_end_penalty)


def assert_close_to_rounding(actual: torch.Tensor, expected: torch.Tensor, rewards: torch.Tensor,
                             spread: torch.Tensor) -> None:
    """Equal up to float32 rounding: a few ulps of each group's largest |reward|, over the group's spread
    (GRPO divides by it, so rounding grows when the answers score alike; RLOO's spread is 1)."""
    ulp = torch.finfo(torch.float32).eps
    tolerance = 8 * rewards.shape[1] * ulp * rewards.abs().amax(dim=1, keepdim=True) / spread
    assert ((actual - expected).abs() <= tolerance).all(), (actual - expected, tolerance)


def group_rewards(trainer, batch) -> torch.Tensor:
    """The (prompts, k) rewards the group baseline compared: the KL is in them for RLOO only."""
    rewards = penalised_scores(trainer, batch)
    if trainer.cfg.kl_placement == "reward":
        rewards = rewards - trainer.cfg.beta * batch.kl
    return rewards.view(-1, trainer.cfg.group_size)


def test_rloo_puts_the_kl_into_the_reward_before_the_leave_one_out_baseline(models):
    trainer = make_trainer(models, "rloo", beta=0.5, max_new_tokens=6)  # short: some answers do not finish
    with torch.no_grad():  # a policy that differs from the reference, so the KL is not 0
        for parameter in trainer.policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    batch = trainer.rollout(PROMPTS[:4])
    assert not batch.finished.all(), "the missing-end penalty needs an unfinished answer to matter"
    kl = torch.where(batch.mask.bool(), kl_k1(batch.logprobs, batch.ref_logprobs), 0.0).sum(dim=1)
    assert kl.abs().max() > 0.01
    rewards = (penalised_scores(trainer, batch) - 0.5 * kl).view(4, 4)
    # A_i = R_i - mean of the other k - 1 rewards, written out.
    expected = torch.stack([rewards[:, i] - (rewards.sum(dim=1) - rewards[:, i]) / 3 for i in range(4)], dim=1)
    assert_close_to_rounding(batch.answer_advantages.view(4, 4), expected, rewards, spread=torch.ones(4, 1))


def test_grpo_standardises_the_scores_and_keeps_the_kl_out_of_them(models):
    trainer = make_trainer(models, "grpo", beta=0.5, max_new_tokens=6)
    with torch.no_grad():
        for parameter in trainer.policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    batch = trainer.rollout(PROMPTS[:4])
    rewards = penalised_scores(trainer, batch).view(4, 4)
    spread = rewards.std(dim=1, keepdim=True) + 1e-4
    expected = (rewards - rewards.mean(dim=1, keepdim=True)) / spread
    assert_close_to_rounding(batch.answer_advantages.view(4, 4), expected, rewards, spread)
    assert trainer.cfg.kl_placement == "loss"


def test_a_group_of_identical_answers_gets_zero_advantages_not_nan(models):
    # Greedy-like sampling (a tiny temperature) makes the k answers to one prompt identical.
    for method in ("rloo", "grpo"):
        batch = make_trainer(models, method, temperature=1e-4).rollout(PROMPTS[:2])
        assert batch.flat_groups == 1.0
        assert not batch.answer_advantages.isnan().any()
        # GRPO tests the spread itself and returns exact zeros; RLOO's R_i - mean of the others
        # is 0 up to rounding.
        assert torch.allclose(batch.answer_advantages, torch.zeros(8), atol=1e-6)
        if method == "grpo":
            assert torch.equal(batch.answer_advantages, torch.zeros(8))


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_first_minibatch_has_ratio_one_and_history_logs_everything(models, method):
    history = make_trainer(models, method).train(progress=False)
    assert history["first_minibatch_approx_kl"].abs().max() < 1e-6
    assert (history["first_minibatch_clip_fraction"] == 0).all()
    for column in ["reward", "true_score", "kl", "kl_k3", "beta", "entropy", "clip_fraction", "approx_kl",
                   "kl_loss", "advantage_std", "flat_groups", "response_length", "finished_rate"]:
        assert column in history
    assert (history["kl_k3"] >= 0).all()


def test_reference_and_reward_model_stay_frozen_while_the_policy_moves(models):
    trainer = make_trainer(models, "grpo")
    reference_before = {name: t.clone() for name, t in trainer.reference.state_dict().items()}
    reward_before = {name: t.clone() for name, t in trainer.reward_model.state_dict().items()}
    policy_before = {name: t.clone() for name, t in trainer.policy.state_dict().items()}
    trainer.train(progress=False)
    assert all(torch.equal(t, trainer.reference.state_dict()[n]) for n, t in reference_before.items())
    assert all(torch.equal(t, trainer.reward_model.state_dict()[n]) for n, t in reward_before.items())
    assert any(not torch.equal(t, trainer.policy.state_dict()[n]) for n, t in policy_before.items())


def test_the_grpo_kl_term_pulls_the_policy_back_to_the_reference(models):
    """With β = 0 only the advantages move the policy; a large β adds k3's pull towards π_ref."""
    moved = {}
    for beta in (0.0, 50.0):
        trainer = make_trainer(models, "grpo", beta=beta, iterations=3, lr=1e-3)
        history = trainer.train(progress=False)
        moved[beta] = history["kl_loss"].iloc[-1]
    assert moved[50.0] < moved[0.0]


def test_same_seed_same_history(models):
    first = make_trainer(models, "rloo").train(progress=False)
    second = make_trainer(models, "rloo").train(progress=False)
    columns = ["reward", "kl", "policy_loss"]
    assert first[columns].equals(second[columns])


def test_a_nan_stops_training_naming_the_statistic(models):
    trainer = make_trainer(models, "rloo")
    trainer.reward_model = copy.deepcopy(trainer.reward_model)
    trainer.reward_model.gain.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="iteration 0"):
        trainer.train(progress=False)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        rloo_grpo.GroupConfig(method="ppo")
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_grpo.GroupConfig(group_size=1)
    with pytest.raises(ValueError, match="kl_in must be"):
        rloo_grpo.GroupConfig(kl_in="both")
    assert rloo_grpo.group_config("grpo", "ci").kl_placement == "loss"
    assert rloo_grpo.group_config("rloo", "ci").kl_placement == "reward"
    assert rloo_grpo.group_config("grpo", "ci", kl_in="reward").kl_placement == "reward"
