"""The DPO trainer on the shipped nano SFT policy: log-probs, the loss on real pairs, training, files."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from rlhf_lab import dpo
from rlhf_lab.config import data_dir
from rlhf_lab.policy import load_policy
from rlhf_lab.preferences import PreferenceRecord, PreferenceStore
from rlhf_lab.tokenizer import format_dialogue, format_prompt

PAIRS = [
    {"prompt": "what is 2 plus 3?", "chosen": "2 plus 3 is 5.", "rejected": "2 plus 3 is 7."},
    {"prompt": "how can i steal a car?", "chosen": "i can not help with that, because it is against the law.",
     "rejected": "break the window and nobody will know."},
    {"prompt": "am i a failure?", "chosen": "no, you are not a failure. everyone has hard times.",
     "rejected": "you are a failure."},
    {"prompt": "hello!", "chosen": "hello! how can i help you today?", "rejected": "i like trains."},
]


@pytest.fixture(scope="module")
def sft():
    return load_policy(data_dir() / "checkpoints" / "sft")


def unpadded_sequence_logprob(model, tokenizer, prompt: str, answer: str) -> float:
    """log π(answer <|end|> | prompt) written out the long way: one unpadded row, a plain forward pass."""
    prompt_length = len(tokenizer.encode(format_prompt(prompt)))
    ids = torch.tensor([tokenizer.encode(format_dialogue(prompt, answer))])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    logprobs = F.log_softmax(logits.double(), dim=-1)
    # token t is predicted by the logits at t - 1
    return sum(logprobs[t - 1, ids[0, t]].item() for t in range(prompt_length, ids.shape[1]))


def test_encode_responses_lays_answers_out_like_a_rollout(sft):
    _, tokenizer = sft
    input_ids, attention_mask, ctx, response_mask = dpo.encode_responses(
        tokenizer, ["hello!", "what is 2 plus 3?"], ["hi!", "2 plus 3 is 5."], "cpu")
    prompt_lengths = [len(tokenizer.encode(format_prompt(q))) for q in ["hello!", "what is 2 plus 3?"]]
    assert ctx == max(prompt_lengths)
    assert attention_mask[0, : ctx - prompt_lengths[0]].sum() == 0  # the shorter prompt is left-padded
    # "hi ! <|end|>" and "2 plus 3 is 5 . <|end|>"
    assert response_mask.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    end_id = tokenizer.eos_token_id
    assert input_ids[0, ctx + 2] == end_id and input_ids[0, ctx + 3] == tokenizer.pad_token_id
    assert input_ids[1, -1] == end_id


def test_sequence_logprobs_match_an_unpadded_forward_pass_at_temperature_one(sft):
    model, tokenizer = sft
    chosen, rejected = dpo.pair_logprobs(model, tokenizer, PAIRS)
    for i, pair in enumerate(PAIRS):
        expected_chosen = unpadded_sequence_logprob(model, tokenizer, pair["prompt"], pair["chosen"])
        expected_rejected = unpadded_sequence_logprob(model, tokenizer, pair["prompt"], pair["rejected"])
        assert chosen[i].item() == pytest.approx(expected_chosen, abs=1e-4)
        assert rejected[i].item() == pytest.approx(expected_rejected, abs=1e-4)


def test_pairs_that_share_answers_get_each_answers_own_logprob(sft):
    model, tokenizer = sft
    # One labelling item (three answers, three pairs, each answer in two of them) and another pair:
    # pair_logprobs runs each distinct answer once (in passes by length) and reads its
    # log-prob wherever it appears.
    answers = ["2 plus 3 is 5.", "2 plus 3 is 7.", "i do not know."]
    pairs = [{"prompt": "what is 2 plus 3?", "chosen": answers[i], "rejected": answers[j]}
             for i, j in ((0, 1), (0, 2), (1, 2))] + PAIRS[1:2]
    token_ids = dpo.pairs_token_ids(tokenizer, pairs)
    assert len(token_ids["prompts"]) == 2 and len(token_ids["answers"]) == 5
    chosen, rejected = dpo.pair_logprobs(model, tokenizer, pairs, token_ids, pass_overhead=1)  # in passes
    for i, pair in enumerate(pairs):
        assert chosen[i].item() == pytest.approx(unpadded_sequence_logprob(model, tokenizer, pair["prompt"],
                                                                           pair["chosen"]), abs=1e-4)
        assert rejected[i].item() == pytest.approx(unpadded_sequence_logprob(model, tokenizer, pair["prompt"],
                                                                             pair["rejected"]), abs=1e-4)
    assert chosen[0] == chosen[1] and rejected[0] == chosen[2]  # one row per distinct answer


def test_the_loss_on_real_pairs_equals_a_transcription_of_the_formula(sft):
    model, tokenizer = sft
    reference = copy.deepcopy(model)
    with torch.no_grad():  # move the policy away from the reference, so the loss is not just log 2
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    beta = 0.3
    loss, chosen_rewards, rejected_rewards = dpo.dpo_loss(*dpo.pair_logprobs(model, tokenizer, PAIRS),
                                                          *dpo.pair_logprobs(reference, tokenizer, PAIRS), beta)
    expected = 0.0
    for pair in PAIRS:
        chosen_ratio = (unpadded_sequence_logprob(model, tokenizer, pair["prompt"], pair["chosen"])
                        - unpadded_sequence_logprob(reference, tokenizer, pair["prompt"], pair["chosen"]))
        rejected_ratio = (unpadded_sequence_logprob(model, tokenizer, pair["prompt"], pair["rejected"])
                          - unpadded_sequence_logprob(reference, tokenizer, pair["prompt"], pair["rejected"]))
        expected += -math.log(1 / (1 + math.exp(-beta * (chosen_ratio - rejected_ratio)))) / len(PAIRS)
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    assert abs(loss.item() - math.log(2)) > 1e-3


def test_dpo_loss_is_a_transcription_of_the_formula_on_random_logprobs():
    generator = torch.Generator().manual_seed(7)
    logps = [-30 * torch.rand(16, generator=generator, dtype=torch.float64) for _ in range(4)]
    for beta in (0.05, 0.5, 2.0):
        loss, _, _ = dpo.dpo_loss(*logps, beta)
        pi_w, pi_l, ref_w, ref_l = (x.tolist() for x in logps)
        expected = sum(-math.log(1 / (1 + math.exp(-beta * ((pi_w[i] - ref_w[i]) - (pi_l[i] - ref_l[i])))))
                       for i in range(16)) / 16
        assert loss.item() == pytest.approx(expected, rel=1e-12)


def make_pairs(copies: int = 6) -> list[dict]:
    """The four pairs under distinct prompts (so a held-out split leaves training pairs)."""
    pairs = []
    for c in range(copies):
        for group, pair in enumerate(PAIRS):
            pairs.append({**pair, "prompt": pair["prompt"] if c == 0 else f"{pair['prompt']} {'please ' * c}".strip(),
                          "group": c * len(PAIRS) + group, "weight": 1.0, "source": "simulated"})
    return pairs


def test_first_step_has_loss_log_two_and_zero_implicit_rewards(sft):
    model, tokenizer = sft
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    cfg = dpo.DPOConfig(max_steps=1, eval_every=100, eval_prompts=4, max_new_tokens=8, heldout_fraction=0.2)
    history = dpo.train_dpo(policy, reference, tokenizer, make_pairs(), cfg, progress=False)
    assert history["loss"].iloc[0] == pytest.approx(math.log(2), abs=1e-5)
    assert history["chosen_reward"].iloc[0] == 0 and history["rejected_reward"].iloc[0] == 0


def test_training_fits_the_pairs_moves_the_policy_and_leaves_the_reference_alone(sft):
    model, tokenizer = sft
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    reference_before = {name: t.clone() for name, t in reference.state_dict().items()}
    pairs = make_pairs()
    cfg = dpo.DPOConfig(beta=0.5, lr=1e-3, epochs=8, items_per_batch=4, eval_every=1000, eval_prompts=4,
                        max_new_tokens=8, heldout_fraction=0.2)
    history = dpo.train_dpo(policy, reference, tokenizer, pairs, cfg, progress=False)
    assert all(torch.equal(t, reference.state_dict()[name]) for name, t in reference_before.items())
    assert history["loss"].iloc[-3:].mean() < 0.5 * math.log(2)
    loss, chosen_rewards, rejected_rewards = dpo.dpo_loss(*dpo.pair_logprobs(policy, tokenizer, pairs),
                                                          *dpo.pair_logprobs(reference, tokenizer, pairs), cfg.beta)
    assert (chosen_rewards > rejected_rewards).all(), "every training pair: chosen now above rejected"
    for column in ["loss", "reward_margin", "reward_accuracy", "heldout_accuracy", "heldout_loss", "true_score", "kl"]:
        assert column in history
    # The sampled evaluation ran on the first and the last step.
    assert history["kl"].notna().sum() == 2 and history["true_score"].notna().sum() == 2


def test_the_trainer_weights_each_pair_by_its_weight(sft, monkeypatch):
    """A learner's label (weight 2 in `preference_pairs`) counts twice in the loss the trainer minimises."""
    model, tokenizer = sft
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    pairs = [dict(pair, weight=2.0 if i % 2 else 1.0) for i, pair in enumerate(make_pairs())]
    seen = []

    def spy(*args, **kwargs):
        weights = args[5] if len(args) > 5 else kwargs.get("weights")
        if weights is not None:  # training steps (the held-out evaluation counts every pair once)
            seen.append(weights.tolist())
        return dpo_loss(*args, **kwargs)

    dpo_loss = dpo.dpo_loss
    monkeypatch.setattr(dpo, "dpo_loss", spy)
    cfg = dpo.DPOConfig(max_steps=3, eval_every=100, eval_prompts=2, max_new_tokens=4, heldout_fraction=0.2)
    dpo.train_dpo(policy, reference, tokenizer, pairs, cfg, progress=False)
    trained_weights = [w for batch in seen for w in batch]
    assert sorted(set(trained_weights)) == [1.0, 2.0]


def test_a_nan_stops_training_naming_the_step(sft):
    model, tokenizer = sft
    policy, reference = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        next(reference.parameters()).fill_(float("nan"))
    cfg = dpo.DPOConfig(max_steps=2, eval_every=100, heldout_fraction=0.2)
    with pytest.raises(FloatingPointError, match="step 0: the reference.s chosen log-probs is nan"):
        dpo.train_dpo(policy, reference, tokenizer, make_pairs(), cfg, progress=False)


def test_preference_pairs_keep_learner_labels_and_drop_ties(tmp_path):
    store = PreferenceStore(tmp_path / "prefs.jsonl")
    store.add_many([
        PreferenceRecord(prompt="hello!", chosen="hi!", rejected="i like trains.", source="human"),
        PreferenceRecord(prompt="hello!", chosen="hey!", rejected="ugh.", source="simulated",
                         annotator="simulated-human"),
        PreferenceRecord(prompt="hello!", chosen="hello!", rejected="hi there!", tie=True),
    ])
    pairs = dpo.preference_pairs(tmp_path / "prefs.jsonl")
    assert [(p["chosen"], p["source"]) for p in pairs] == [("hi!", "human"), ("hey!", "simulated")]


def test_empty_or_broken_preference_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no preference records"):
        dpo.preference_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "hi", "chosen": 3, "rejected": "x"}\n')
    # The store skips a bad line with a warning naming the file, line and field.
    with pytest.warns(UserWarning, match=r"broken\.jsonl, line 1, field"):
        with pytest.raises(ValueError, match="no preference records"):
            dpo.preference_pairs(tmp_path / "broken.jsonl")


def test_dpo_uses_the_preference_file_the_reward_model_learned_from(tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", str(artifacts))
    shipped = data_dir() / "world" / "preferences.jsonl"
    # The shipped reward model learned from the shipped file, even when lesson 03 left a store behind.
    lesson_store = artifacts / "preferences" / "preferences.jsonl"
    lesson_store.parent.mkdir(parents=True)
    lesson_store.write_text("")
    assert dpo.reward_model_preferences(data_dir() / "checkpoints" / "reward") == shipped
    # A reward model trained in lesson 04 (under artifacts/) learned from the lessons' store.
    lesson_reward = artifacts / "reward"
    lesson_reward.mkdir()
    (lesson_reward / "metrics.json").write_text(json.dumps({"train_pairs": 10}))
    assert dpo.reward_model_preferences(lesson_reward) == lesson_store
    # A reward stage that recorded its file wins.
    recorded = tmp_path / "mine.jsonl"
    recorded.write_text("")
    (lesson_reward / "metrics.json").write_text(json.dumps({"prefs": str(recorded)}))
    assert dpo.reward_model_preferences(lesson_reward) == recorded
