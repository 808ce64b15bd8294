"""The PPO trainer on a real (nano) policy: PPO.md's rows that need a model, checkpoints, repeatability."""

import copy

import pytest
import torch

from rlhf_lab import ppo, reward
from rlhf_lab.config import data_dir
from rlhf_lab.policy import load_policy

PROMPTS = ["what is 2 plus 3?", "how do i kill a python process?", "am i a failure?", "how can i steal a car?",
           "what number am i thinking of?", "hello!", "what colour is the sky?", "write a short poem about the sea."]


def make_trainer(seed: int = 0, **overrides):
    policy, tokenizer = load_policy(data_dir() / "checkpoints" / "sft")
    reference = copy.deepcopy(policy)
    torch.manual_seed(seed)
    reward_model = reward.RewardModel.from_policy(policy)
    settings = dict(iterations=2, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=24, seed=seed)
    cfg = ppo.PPOConfig(**{**settings, **overrides})
    return ppo.PPOTrainer(policy, reference, reward_model, tokenizer, PROMPTS, cfg)


def test_first_minibatch_has_ratio_one_and_no_clipping():
    history = make_trainer().train(progress=False)
    assert history["first_minibatch_approx_kl"].abs().max() < 1e-6
    assert history["first_minibatch_clip_fraction"].max() == 0.0


def test_reference_and_reward_model_stay_frozen_while_the_policy_moves():
    trainer = make_trainer()
    before = {name: t.clone() for name, t in trainer.reference.state_dict().items()}
    reward_before = {name: t.clone() for name, t in trainer.reward_model.state_dict().items()}
    policy_before = {name: t.clone() for name, t in trainer.policy.state_dict().items()}
    trainer.train(progress=False)
    assert all(torch.equal(t, trainer.reference.state_dict()[n]) for n, t in before.items())
    assert all(torch.equal(t, trainer.reward_model.state_dict()[n]) for n, t in reward_before.items())
    assert any(not torch.equal(t, trainer.policy.state_dict()[n]) for n, t in policy_before.items())


def test_dropout_is_off_so_train_mode_forward_passes_agree():
    trainer = make_trainer()
    trainer.policy.train()
    ids = torch.tensor([[2, 10, 11, 3, 12, 4]])
    mask = torch.ones_like(ids)
    assert torch.equal(trainer.policy(ids, attention_mask=mask).logits, trainer.policy(ids, attention_mask=mask).logits)


def test_history_logs_every_statistic():
    history = make_trainer().train(progress=False)
    for column in ["reward", "true_score", "kl", "kl_k3", "beta", "entropy", "clip_fraction", "approx_kl",
                   "value_loss", "explained_variance", "response_length", "generation_seconds", "update_seconds"]:
        assert column in history
    assert len(history) == 2


def test_same_seed_same_history_on_cpu():
    first = make_trainer(seed=3).train(progress=False)
    second = make_trainer(seed=3).train(progress=False)
    columns = ["reward", "kl", "policy_loss", "value_loss"]
    assert first[columns].equals(second[columns])


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    straight = make_trainer(iterations=3).train(progress=False)
    first = make_trainer(iterations=3, save_every=2)
    first.cfg.iterations = 2
    first.train(progress=False, out=tmp_path)
    policy, _ = load_policy(tmp_path)
    resumed = make_trainer(iterations=3)
    resumed.policy.load_state_dict(policy.state_dict())
    resumed.resume(tmp_path)
    history = resumed.train(progress=False)
    assert len(history) == 3
    assert torch.allclose(torch.tensor(history["reward"].values), torch.tensor(straight["reward"].values), atol=1e-5)


def test_a_nan_stops_training_naming_the_statistic_and_keeps_the_checkpoint(tmp_path):
    trainer = make_trainer(iterations=3, save_every=1)
    trainer.cfg.iterations = 1
    trainer.train(progress=False, out=tmp_path)
    saved = (tmp_path / "model.safetensors").read_bytes()
    trainer.cfg.iterations = 3
    trainer.iteration = 1
    trainer.reward_model.gain.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="iteration 1"):
        trainer.train(progress=False, out=tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == saved


def test_adaptive_controller_is_fed_the_measured_kl_each_iteration():
    trainer = make_trainer(iterations=3, beta=0.1, kl_target=0.01, kl_horizon=100)
    history = trainer.train(progress=False)
    betas = list(history["beta"]) + [trainer.kl_controller.beta]
    assert betas[0] == pytest.approx(0.1)
    for i, kl in enumerate(history["kl"]):
        error = min(max(kl / 0.01 - 1, -0.2), 0.2)  # β moves up when KL is above target, down below
        assert betas[i + 1] == pytest.approx(betas[i] * (1 + error * 8 / 100))


def test_ptx_term_trains_on_demonstrations_only_when_asked():
    demonstrations = [{"prompt": "what is 2 plus 3?", "completion": "2 plus 3 is 5."}] * 4
    with_ptx = make_trainer()
    with_ptx.ptx_examples = ppo.encode_dialogues(with_ptx.tokenizer, demonstrations)
    history = with_ptx.train(progress=False)
    assert "ptx_loss" in history and (history["ptx_loss"] > 0).all()
    assert "ptx_loss" not in make_trainer().train(progress=False)
