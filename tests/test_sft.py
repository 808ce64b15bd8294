"""The language-model trainer of `rlhf_lab.sft`: the prompt-masked loss, batching and the loop.

The model-based tests use the shipped nano base checkpoint and its tokenizer (loaded in well
under a second) and train for a handful of steps only.
"""

import pytest
import torch
import torch.nn.functional as F

from rlhf_lab import data, policy, sft
from rlhf_lab.config import data_dir
from rlhf_lab.tokenizer import END, format_dialogue, format_prompt

QUESTION = "what is 3 plus 4?"
ANSWER = "3 plus 4 is 7."
LONGER = ("hi, how are you?", "hello! i am fine, thank you for asking. how can i help you today?")


@pytest.fixture(scope="module")
def base():
    """(model, tokenizer) of the shipped base checkpoint. Tests that train take a deep copy."""
    return policy.load_policy(data_dir() / "checkpoints" / "base")


@pytest.fixture(scope="module")
def tokenizer(base):
    return base[1]


def fresh_base():
    """A new copy of the shipped base model, safe to train."""
    return policy.load_policy(data_dir() / "checkpoints" / "base")[0]


def encoded(tokenizer, rows: list[tuple[str, str]]):
    return sft.encode_dialogues(tokenizer, [{"prompt": q, "completion": a} for q, a in rows])


# ----- collate: which tokens are targets ------------------------------------------------------


def test_encode_dialogues_counts_the_prompt_tokens(tokenizer):
    [(ids, prompt_length)] = encoded(tokenizer, [(QUESTION, ANSWER)])
    assert ids == tokenizer.encode(format_dialogue(QUESTION, ANSWER))
    assert prompt_length == len(tokenizer.encode(format_prompt(QUESTION)))
    assert tokenizer.decode(ids[prompt_length:-1]) == ANSWER
    assert ids[-1] == tokenizer.convert_tokens_to_ids(END)


def test_collate_masks_prompt_and_padding_and_keeps_answer_and_end_token(tokenizer):
    short, long = encoded(tokenizer, [(QUESTION, ANSWER), LONGER])
    input_ids, attention_mask, loss_mask = sft.collate([short, long], tokenizer.pad_token_id, response_only=True)
    width = len(long[0])
    assert input_ids.shape == attention_mask.shape == loss_mask.shape == (2, width)
    for row, (ids, prompt_length) in enumerate([short, long]):
        pads = width - len(ids)
        # Left padding: pads first, then the real tokens, unchanged.
        assert input_ids[row, :pads].tolist() == [tokenizer.pad_token_id] * pads
        assert input_ids[row, pads:].tolist() == ids
        assert attention_mask[row].tolist() == [0] * pads + [1] * len(ids)
        answer_length = len(ids) - prompt_length  # the answer's tokens and the end token
        assert loss_mask[row].tolist() == [0.0] * (pads + prompt_length) + [1.0] * answer_length
    assert len(short[0]) < width, "the test needs a padded row"


def test_collate_for_pretraining_targets_every_real_token_but_the_first(tokenizer):
    short, long = encoded(tokenizer, [(QUESTION, ANSWER), LONGER])
    _, attention_mask, loss_mask = sft.collate([short, long], tokenizer.pad_token_id, response_only=False)
    for row, (ids, _) in enumerate([short, long]):
        pads = attention_mask.shape[1] - len(ids)
        # The first real token has nothing before it to be predicted from.
        assert loss_mask[row].tolist() == [0.0] * (pads + 1) + [1.0] * (len(ids) - 1)


# ----- lm_loss: masked next-token cross-entropy ---------------------------------------------


def masked_batch(tokenizer):
    examples = encoded(tokenizer, [(QUESTION, ANSWER), ("hello!", "hello! how can i help you today?")])
    input_ids, _, loss_mask = sft.collate(examples, tokenizer.pad_token_id, response_only=True)
    logits = torch.randn(*input_ids.shape, len(tokenizer), generator=torch.Generator().manual_seed(0))
    return input_ids, loss_mask, logits


def test_lm_loss_is_the_mean_cross_entropy_of_the_answer_tokens(tokenizer):
    input_ids, loss_mask, logits = masked_batch(tokenizer)
    # Reference: cross-entropy of token t from the logits at t - 1, on targets only.
    targets = input_ids[:, 1:].masked_fill(loss_mask[:, 1:] == 0, -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(sft.lm_loss(logits, input_ids, loss_mask), expected, atol=1e-6)


def test_lm_loss_ignores_the_predictions_of_masked_tokens(tokenizer):
    input_ids, loss_mask, logits = masked_batch(tokenizer)
    loss = sft.lm_loss(logits, input_ids, loss_mask)
    # The logits at position t predict token t + 1. Those that predict a prompt or pad token
    # (target mask 0) must not matter at all, however much they change.
    predicts_masked = torch.cat([loss_mask[:, 1:] == 0, torch.ones_like(loss_mask[:, :1], dtype=torch.bool)], dim=1)
    assert predicts_masked.any() and not predicts_masked.all()
    changed = logits.clone()
    changed[predicts_masked] = 50 * torch.randn(int(predicts_masked.sum()), logits.shape[-1])
    assert torch.equal(sft.lm_loss(changed, input_ids, loss_mask), loss)


def test_lm_loss_depends_on_the_logits_that_predict_the_first_answer_token(tokenizer):
    input_ids, loss_mask, logits = masked_batch(tokenizer)
    loss = sft.lm_loss(logits, input_ids, loss_mask)
    # The last prompt position (<|assistant|>) predicts the first answer token: it is trained.
    row, first_answer = 0, int(loss_mask[0].nonzero()[0])
    changed = logits.clone()
    changed[row, first_answer - 1, input_ids[row, first_answer]] += 10.0
    assert sft.lm_loss(changed, input_ids, loss_mask) < loss


def test_lm_loss_with_an_empty_mask_is_zero_not_nan(tokenizer):
    input_ids, loss_mask, logits = masked_batch(tokenizer)
    assert sft.lm_loss(logits, input_ids, torch.zeros_like(loss_mask)).item() == 0.0


@pytest.mark.parametrize("response_only", [True, False])
def test_model_lm_loss_is_lm_loss_of_the_full_forward_pass_with_the_same_gradient(tokenizer, response_only):
    # model_lm_loss runs the LM head only where a target is predicted; the loss and gradient must not change.
    examples = encoded(tokenizer, [(QUESTION, ANSWER), ("hello!", "hello! how can i help you today?")])
    input_ids, attention_mask, loss_mask = sft.collate(examples, tokenizer.pad_token_id, response_only)
    losses, gradients = [], []
    for compute in (lambda m: sft.lm_loss(policy.forward(m, input_ids, attention_mask), input_ids, loss_mask),
                    lambda m: sft.model_lm_loss(m, input_ids, attention_mask, loss_mask)):
        model = fresh_base()
        loss = compute(model)
        loss.backward()
        losses.append(loss)
        gradients.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    # The same float32 sums over fewer rows: equal up to rounding.
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)
    assert sft.model_lm_loss(model, input_ids, attention_mask, torch.zeros_like(loss_mask)).item() == 0.0


# ----- batches ---------------------------------------------------------------------------------


def test_length_bucketed_batches_cover_every_example_once_per_pass():
    lengths = torch.randint(3, 40, (250,), generator=torch.Generator().manual_seed(0)).tolist()
    batch_size = 4
    batches = sft.length_bucketed_batches(lengths, batch_size, torch.Generator().manual_seed(1))
    # Pools of 50 batches (200 examples) are cut into batches separately: 200 + 50 examples here.
    per_pass = 200 // batch_size + (50 + batch_size - 1) // batch_size
    passes = [[next(batches) for _ in range(per_pass)] for _ in range(2)]
    for one_pass in passes:
        assert all(1 <= len(batch) <= batch_size for batch in one_pass)
        assert sorted(i for batch in one_pass for i in batch) == list(range(len(lengths)))
    assert passes[0] != passes[1], "each pass should be a new random order"


def test_length_bucketed_batches_group_similar_lengths():
    lengths = torch.randint(3, 40, (400,), generator=torch.Generator().manual_seed(0)).tolist()
    batches = sft.length_bucketed_batches(lengths, 8, torch.Generator().manual_seed(1))
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in (next(batches) for _ in range(50))]
    # Random batches of 8 from lengths 3..39 would spread over about 30 tokens; sorted pools of
    # 400 examples give neighbours that differ by one or two.
    assert sum(spreads) / len(spreads) < 5


# ----- the training loop --------------------------------------------------------------------


def short_run(tokenizer, seed: int):
    rows = data.load_dialogues(data.world_file("sft"))[:200]
    model = policy.new_policy("nano", tokenizer, seed=0)
    cfg = sft.LMConfig(steps=4, batch_size=8, lr=1e-3, warmup_steps=1, response_only=True, seed=seed, log_every=1)
    return sft.train_language_model(model, tokenizer, rows, cfg, progress=False)


def test_same_seed_gives_an_identical_loss_history(tokenizer):
    first, second = short_run(tokenizer, seed=3), short_run(tokenizer, seed=3)
    assert len(first) == 4
    assert first["loss"].tolist() == second["loss"].tolist()
    # ... and the seed matters (it picks the batches), so the check above is not vacuous.
    assert first["loss"].tolist() != short_run(tokenizer, seed=4)["loss"].tolist()


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = sft.LMConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert sft.learning_rate(0, cfg) == pytest.approx(1e-4)
    assert sft.learning_rate(9, cfg) == pytest.approx(1e-3)
    assert sft.learning_rate(10, cfg) == pytest.approx(1e-3)
    assert sft.learning_rate(100, cfg) == pytest.approx(1e-4)
    assert sft.learning_rate(30, cfg) > sft.learning_rate(60, cfg) > sft.learning_rate(90, cfg)


def test_short_sft_run_lowers_the_heldout_loss_on_demonstrations(tokenizer):
    rows = data.load_dialogues(data.world_file("sft"))
    # Held-out rows, never trained on. (The world is small, so many of their questions occur in
    # training too, with other slot values or other answers: what SFT learns is how to answer.)
    train, heldout = rows[:-100], rows[-100:]
    model = fresh_base()
    before = sft.heldout_loss(model, tokenizer, heldout)
    cfg = sft.sft_config("ci", steps=25, batch_size=16)
    history = sft.train_language_model(model, tokenizer, train, cfg, progress=False)
    after = sft.heldout_loss(model, tokenizer, heldout)
    assert after < 0.9 * before, (before, after)
    assert history["loss"].iloc[-3:].mean() < history["loss"].iloc[:3].mean()


def test_training_on_no_rows_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        sft.train_language_model(policy.new_policy("nano", tokenizer), tokenizer, [], sft.LMConfig(steps=1))


# ----- the validation curve: held-out loss during training ------------------------------------


def run_with_heldout(tokenizer, heldout_rows, eval_every: int = 2):
    rows = data.load_dialogues(data.world_file("sft"))[:200]
    model = policy.new_policy("nano", tokenizer, seed=0)
    cfg = sft.LMConfig(steps=5, batch_size=8, lr=1e-3, warmup_steps=1, response_only=True, seed=3, log_every=1)
    before = sft.heldout_loss(model, tokenizer, heldout_rows) if heldout_rows else None
    history = sft.train_language_model(model, tokenizer, rows, cfg, progress=False, heldout_rows=heldout_rows,
                                       eval_every=eval_every)
    return model, history, before


def test_heldout_loss_is_recorded_every_eval_every_steps_and_at_the_last(tokenizer):
    heldout = data.load_dialogues(data.world_file("sft"))[-20:]
    model, history, before = run_with_heldout(tokenizer, heldout)
    assert history["step"].tolist() == [0, 1, 2, 3, 4]
    measured = history.set_index("step")["heldout_loss"]
    assert measured[[1, 3]].isna().all() and measured[[0, 2, 4]].notna().all()
    # Step 0's value is the untrained model's loss on the held-out rows: the same computation.
    assert measured[0] == pytest.approx(before, rel=1e-6)
    # The model is left in eval mode, as without held-out rows.
    assert not model.training


def test_evaluating_on_heldout_rows_does_not_change_the_training(tokenizer):
    heldout = data.load_dialogues(data.world_file("sft"))[-20:]
    with_eval, history_with, _ = run_with_heldout(tokenizer, heldout)
    without_eval, history_without, _ = run_with_heldout(tokenizer, None)
    assert "heldout_loss" not in history_without
    # Same batches, same updates: evaluation draws no random numbers and leaves no gradients.
    assert history_with["loss"].tolist() == history_without["loss"].tolist()
    for (name, trained), (_, untouched) in zip(with_eval.named_parameters(), without_eval.named_parameters()):
        assert torch.equal(trained, untouched), name


def test_bad_heldout_arguments_are_clear_errors(tokenizer):
    rows = data.load_dialogues(data.world_file("sft"))[:8]
    model = policy.new_policy("nano", tokenizer, seed=0)
    cfg = sft.LMConfig(steps=1, batch_size=4)
    with pytest.raises(ValueError, match="heldout_rows needs at least one row"):
        sft.train_language_model(model, tokenizer, rows, cfg, progress=False, heldout_rows=[])
    with pytest.raises(ValueError, match="eval_every at least 1"):
        sft.train_language_model(model, tokenizer, rows, cfg, progress=False, heldout_rows=rows, eval_every=0)
