"""The PPO trainer on a real (nano) policy: the rules that need a model, checkpoints, repeatability.

Most tests read one shared 2-iteration run (`trained_ppo` in conftest.py); those that need their
own settings build a fresh trainer with `new_ppo_trainer`.
"""

import pytest
import torch

from rlhf_lab import ppo
from rlhf_lab.policy import load_policy

pytestmark = pytest.mark.slow  # every test here trains


@pytest.fixture(scope="module")
def frozen_run(new_ppo_trainer):
    """One 2-iteration run, shared by the tests that only read it, with the weights of all three
    models from before it started."""
    trainer = new_ppo_trainer()
    before = {name: {k: t.clone() for k, t in model.state_dict().items()}
              for name, model in (("reference", trainer.reference), ("reward_model", trainer.reward_model),
                                  ("policy", trainer.policy))}
    return trainer, trainer.train(progress=False), before


def test_first_minibatch_has_ratio_one_and_no_clipping(frozen_run):
    _, history, _ = frozen_run
    assert history["first_minibatch_approx_kl"].abs().max() < 1e-6
    assert history["first_minibatch_clip_fraction"].max() == 0.0


def test_reference_and_reward_model_stay_frozen_while_the_policy_moves(frozen_run):
    trainer, _, before = frozen_run
    for name in ("reference", "reward_model"):
        after = getattr(trainer, name).state_dict()
        assert all(torch.equal(t, after[k]) for k, t in before[name].items()), name
    assert any(not torch.equal(t, trainer.policy.state_dict()[k]) for k, t in before["policy"].items())


def test_history_logs_every_statistic(frozen_run):
    _, history, _ = frozen_run
    for column in ["reward", "true_score", "kl", "kl_k3", "beta", "entropy", "clip_fraction", "approx_kl",
                   "value_loss", "explained_variance", "response_length", "generation_seconds", "update_seconds"]:
        assert column in history
    assert len(history) == 2


def test_dropout_is_off_so_train_mode_forward_passes_agree(new_ppo_trainer):
    trainer = new_ppo_trainer()
    trainer.policy.train()
    ids = torch.tensor([[2, 10, 11, 3, 12, 4]])
    mask = torch.ones_like(ids)
    assert torch.equal(trainer.policy(ids, attention_mask=mask).logits, trainer.policy(ids, attention_mask=mask).logits)


def test_same_seed_same_history_on_cpu(new_ppo_trainer):
    first = new_ppo_trainer(seed=3).train(progress=False)
    second = new_ppo_trainer(seed=3).train(progress=False)
    columns = ["reward", "kl", "policy_loss", "value_loss"]
    assert first[columns].equals(second[columns])


def test_resume_continues_exactly_where_it_stopped(tmp_path, new_ppo_trainer):
    straight = new_ppo_trainer(iterations=3).train(progress=False)
    first = new_ppo_trainer(iterations=3, save_every=2)
    first.cfg.iterations = 2
    first.train(progress=False, out=tmp_path)
    policy, _ = load_policy(tmp_path)
    resumed = new_ppo_trainer(iterations=3)
    resumed.policy.load_state_dict(policy.state_dict())
    resumed.resume(tmp_path)
    history = resumed.train(progress=False)
    assert len(history) == 3
    assert torch.allclose(torch.tensor(history["reward"].values), torch.tensor(straight["reward"].values), atol=1e-5)


def test_a_nan_stops_training_naming_the_statistic_and_keeps_the_checkpoint(tmp_path, new_ppo_trainer):
    trainer = new_ppo_trainer(iterations=3, save_every=1)
    trainer.cfg.iterations = 1
    trainer.train(progress=False, out=tmp_path)
    saved = (tmp_path / "model.safetensors").read_bytes()
    trainer.cfg.iterations = 3
    trainer.iteration = 1
    trainer.reward_model.gain.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="iteration 1: the reward model's score is nan.*iteration 1 is kept"):
        trainer.train(progress=False, out=tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == saved


def test_adaptive_controller_is_fed_the_measured_kl_each_iteration(new_ppo_trainer):
    trainer = new_ppo_trainer(iterations=3, beta=0.1, kl_target=0.01, kl_horizon=100)
    history = trainer.train(progress=False)
    betas = list(history["beta"]) + [trainer.kl_controller.beta]
    assert betas[0] == pytest.approx(0.1)
    for i, kl in enumerate(history["kl"]):
        error = min(max(kl / 0.01 - 1, -0.2), 0.2)  # β moves up when KL is above target, down below
        assert betas[i + 1] == pytest.approx(betas[i] * (1 + error * 8 / 100))


def test_ptx_term_trains_on_demonstrations_only_when_asked(new_ppo_trainer):
    demonstrations = [{"prompt": "what is 2 plus 3?", "completion": "2 plus 3 is 5."}] * 4
    with_ptx = new_ppo_trainer()
    with_ptx.ptx_examples = ppo.encode_dialogues(with_ptx.tokenizer, demonstrations)
    history = with_ptx.train(progress=False)
    assert "ptx_loss" in history and (history["ptx_loss"] > 0).all()
    assert "ptx_loss" not in new_ppo_trainer().train(progress=False)


def test_a_minibatch_is_cut_to_its_own_columns_with_the_same_log_probs(sft):
    # Rows of a rollout padded to the longest prompt and answer of all rows; a minibatch of the two
    # shortest needs fewer columns, and its log-probs there are those of the full width.
    from rlhf_lab.policy import generate, response_logprobs

    model, tokenizer = sft
    rollout = generate(model, tokenizer, ["hello", "what is 2 plus 3?", "how do i steal a car?", "hi"], 24, 0.7,
                       torch.Generator().manual_seed(3))
    ids, attention, mask, ctx = rollout.input_ids, rollout.attention_mask, rollout.response_mask, rollout.context_length
    rows = sorted(range(4), key=lambda row: mask[row].sum().item())[:2]
    inputs, answer, short_ctx = ppo.minibatch_columns(attention[rows], mask[rows], ctx)
    assert inputs.stop - inputs.start < ids.shape[1], "the two shortest answers need fewer columns"
    assert mask[rows, answer].sum() == mask[rows].sum(), "no real token is cut"
    full = response_logprobs(model, ids[rows], attention[rows], ctx, 0.7)[:, answer]
    cut = response_logprobs(model, ids[rows, inputs], attention[rows, inputs], short_ctx, 0.7)
    real = mask[rows, answer].bool()
    # float32 sums of a few hundred terms in another order: agree to ~1e-5 of their size, not bit for bit
    assert torch.allclose(cut[real], full[real], rtol=1e-4, atol=1e-4)
