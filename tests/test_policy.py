"""Tiny GPT policies: presets, save/load, logits alignment, padding, temperature, generation.

These are the tests of docs/implementation_rules.md that live in `rlhf_lab.policy`. Two small models
make them possible in seconds:

- `trained_model`: a nano GPT overfit on a handful of dialogues, so it answers deterministically
  where the data is deterministic and samples red/blue/green 5:3:2 for "name a colour.";
- `position_sensitive_model`: a nano GPT with large random embeddings and output layer, so its
  outputs change a lot if a token is given the wrong position (what padding bugs do) and greedy
  choices are never near-ties.
"""

import copy
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.activations import ACT2FN

from rlhf_lab.checkpoints import CheckpointError
from rlhf_lab.policy import (
    PRESETS,
    Rollout,
    encode_prompts,
    forward,
    generate,
    in_row_order,
    length_chunks,
    load_policy,
    new_policy,
    position_ids_from_mask,
    response_logits,
    response_logprobs,
    save_policy,
)
from rlhf_lab.tokenizer import build_tokenizer, format_dialogue, format_prompt

DETERMINISTIC = {
    "hi": "hello! how can i help you?",
    "what is 7 plus 5?": "12.",
    "am i a failure?": "no, you are not a failure. you are doing your best.",
}
COLOUR_QUESTION = "name a colour."
COLOUR_COUNTS = {"red.": 5, "blue.": 3, "green.": 2}


def training_dialogues() -> list[str]:
    dialogues = [format_dialogue(question, answer) for question, answer in DETERMINISTIC.items()]
    for answer, count in COLOUR_COUNTS.items():
        dialogues += [format_dialogue(COLOUR_QUESTION, answer)] * count
    return dialogues


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(training_dialogues() + ["what is the capital of france?"])


def memorise(model, tokenizer, dialogues: list[str], steps: int, lr: float = 5e-3):
    """Overfit `model` on `dialogues` with the next-token loss (left-padded, pads ignored)."""
    batch = tokenizer(dialogues, padding=True, return_tensors="pt")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        logits = forward(model, input_ids, attention_mask)[:, :-1]
        token_losses = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        # Only real tokens predicted from real tokens: the last pad must not learn to predict
        # the first token (what GPT-2 computes at pad positions differs between versions).
        target_mask = (attention_mask[:, :-1] * attention_mask[:, 1:]).float()
        loss = (token_losses * target_mask).sum() / target_mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_model(tokenizer):
    torch.manual_seed(0)
    return memorise(new_policy("nano", tokenizer, seed=0), tokenizer, training_dialogues(), steps=150)


@pytest.fixture(scope="module")
def position_sensitive_model(tokenizer):
    model = new_policy("nano", tokenizer, seed=1)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # std 1 instead of 0.02: a token's position matters as much as the token itself.
        for embedding in (model.transformer.wte.weight, model.transformer.wpe.weight):
            embedding.copy_(torch.randn(embedding.shape, generator=generator))
        # An output layer of its own (untied from wte, where each token would predict itself):
        # large random logits, so greedy choices are far from ties and vary along the sequence.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator))
    return model.eval()


def encode(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text)])


def prompt_length(tokenizer, question: str) -> int:
    return len(tokenizer.encode(format_prompt(question)))


# ----- presets and construction ----------------------------------------------------------------


def test_presets_have_the_documented_sizes_and_no_dropout():
    sizes = {name: (p["n_layer"], p["n_head"], p["n_embd"]) for name, p in PRESETS.items()}
    assert sizes == {"nano": (2, 2, 64), "tiny": (4, 4, 128), "small": (6, 8, 256)}
    for preset in PRESETS.values():
        assert preset["n_positions"] == 192
        assert preset["resid_pdrop"] == preset["embd_pdrop"] == preset["attn_pdrop"] == 0.0


def test_new_policy_takes_ids_from_the_tokenizer(tokenizer):
    model = new_policy("nano", tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.lm_head.weight.shape == (len(tokenizer), 64)


def test_unknown_preset_lists_the_valid_ones(tokenizer):
    with pytest.raises(ValueError, match="nano, tiny, small"):
        new_policy("huge", tokenizer)


def test_seed_fixes_the_weights_and_leaves_the_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected_next_draw = torch.rand(3)
    torch.manual_seed(123)
    first = new_policy("nano", tokenizer, seed=7)
    assert torch.equal(torch.rand(3), expected_next_draw)
    second = new_policy("nano", tokenizer, seed=7)
    other = new_policy("nano", tokenizer, seed=8)
    assert torch.equal(first.transformer.wte.weight, second.transformer.wte.weight)
    assert not torch.equal(first.transformer.wte.weight, other.transformer.wte.weight)


def test_dropout_is_off_two_forward_passes_in_train_mode_agree(tokenizer):
    model = new_policy("nano", tokenizer).train()
    input_ids = encode(tokenizer, format_dialogue("hi", "hello!"))
    mask = torch.ones_like(input_ids)
    assert torch.equal(forward(model, input_ids, mask), forward(model, input_ids, mask))


# ----- save and load -----------------------------------------------------------------------------


def test_save_load_round_trip_writes_only_safetensors_and_keeps_the_logits(trained_model, tokenizer, tmp_path):
    save_policy(trained_model, tokenizer, tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert "model.safetensors" in names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], names
    assert set(load_file(tmp_path / "model.safetensors")) >= {"transformer.wte.weight"}

    input_ids = encode(tokenizer, format_dialogue("what is 7 plus 5?", "12."))
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        expected = forward(trained_model, input_ids, mask)
        model, reloaded_tokenizer = load_policy(tmp_path)
        assert torch.allclose(forward(model, input_ids, mask), expected, atol=1e-6)
        plain = AutoModelForCausalLM.from_pretrained(tmp_path)
        assert torch.allclose(forward(plain, input_ids, mask), expected, atol=1e-6)
    assert not model.training
    dialogue = format_dialogue("hi", "hello!")
    assert reloaded_tokenizer.encode(dialogue) == tokenizer.encode(dialogue)
    assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id


def test_load_policy_missing_directory_says_where_it_looked(tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(FileNotFoundError, match="no_such_checkpoint"):
        load_policy(missing)


def test_load_policy_refuses_pickled_weights(trained_model, tokenizer, tmp_path):
    save_policy(trained_model, tokenizer, tmp_path)
    state_dict = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(state_dict, tmp_path / "pytorch_model.bin")  # a pickle: must never be loaded
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_policy(tmp_path)


# ----- position ids and padding ------------------------------------------------------------------


def test_position_ids_count_only_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(position_ids_from_mask(mask), expected)


def test_left_padding_does_not_change_response_logprobs(position_sensitive_model, tokenizer):
    question = "what is 7 plus 5?"
    unpadded = encode(tokenizer, format_dialogue(question, "12."))
    context = prompt_length(tokenizer, question)
    pad = torch.full((1, 2), tokenizer.pad_token_id)
    padded = torch.cat([pad, unpadded], dim=1)
    padded_mask = torch.cat([torch.zeros_like(pad), torch.ones_like(unpadded)], dim=1)
    with torch.no_grad():
        expected = response_logprobs(position_sensitive_model, unpadded, torch.ones_like(unpadded), context)
        actual = response_logprobs(position_sensitive_model, padded, padded_mask, context + 2)
        assert torch.allclose(actual, expected, atol=1e-5)

        # Why `forward` passes position ids: GPT-2 left alone numbers positions from the start of
        # the tensor, pads included, and the padded row gets different log-probs.
        logits = position_sensitive_model(input_ids=padded, attention_mask=padded_mask).logits
        naive = F.log_softmax(logits[:, context + 1 : -1], dim=-1).gather(-1, padded[:, context + 2 :, None])[..., 0]
        assert (naive - expected).abs().max() > 0.1


def test_a_padded_batch_gives_each_row_its_unpadded_logprobs(position_sensitive_model, tokenizer):
    # Full dialogues left-padded to a common length; compare each row with the row alone.
    dialogues = [format_dialogue("hi", "hello!"), format_dialogue("am i a failure?", "no, you are doing your best.")]
    batch = tokenizer(dialogues, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # the short one really is padded on the left
    with torch.no_grad():
        logits = forward(position_sensitive_model, batch["input_ids"], batch["attention_mask"])
        for row, dialogue in enumerate(dialogues):
            alone_ids = encode(tokenizer, dialogue)
            alone = forward(position_sensitive_model, alone_ids, torch.ones_like(alone_ids))
            assert torch.allclose(logits[row, -alone_ids.shape[1] :], alone[0], atol=1e-4)


# ----- logits alignment (rule 1) ----------------------------------------------------------


def test_response_logprobs_use_the_logits_one_position_earlier(trained_model, tokenizer):
    question, answer = "am i a failure?", DETERMINISTIC["am i a failure?"]
    input_ids = encode(tokenizer, format_dialogue(question, answer))
    mask = torch.ones_like(input_ids)
    context = prompt_length(tokenizer, question)
    with torch.no_grad():
        logprobs = response_logprobs(trained_model, input_ids, mask, context)
        assert logprobs.shape == (1, input_ids.shape[1] - context)
        # The model has memorised this answer: each token is certain given the ones before it.
        assert logprobs.min() > -0.1

        # The classic bug: reading the logits at the token's own position (they predict the NEXT
        # token) scores every token as very unlikely.
        logits = forward(trained_model, input_ids, mask)
        shifted = F.log_softmax(logits[:, context:], dim=-1).gather(-1, input_ids[:, context:, None])[..., 0]
        assert shifted.mean() < -3


def test_response_logits_and_logprobs_agree(trained_model, tokenizer):
    input_ids = encode(tokenizer, format_dialogue("hi", "hello! how can i help you?"))
    mask = torch.ones_like(input_ids)
    context = prompt_length(tokenizer, "hi")
    with torch.no_grad():
        logits = response_logits(trained_model, input_ids, mask, context, temperature=0.7)
        logprobs = response_logprobs(trained_model, input_ids, mask, context, temperature=0.7)
    expected = F.log_softmax(logits, dim=-1).gather(-1, input_ids[:, context:, None])[..., 0]
    assert torch.allclose(logprobs, expected)


def test_response_logits_are_the_full_forward_passs_logits_at_the_response_positions(position_sensitive_model,
                                                                                      tokenizer):
    # response_logits runs the LM head on the hidden states of the response positions only.
    dialogues = [format_dialogue("what is 7 plus 5?", "12."), format_dialogue(COLOUR_QUESTION, "red.")]
    batch = tokenizer(dialogues, padding=True, return_tensors="pt")  # left-padded
    context = batch["input_ids"].shape[1] - 3
    with torch.no_grad():
        full = forward(position_sensitive_model, batch["input_ids"], batch["attention_mask"])
        logits = response_logits(position_sensitive_model, batch["input_ids"], batch["attention_mask"], context, 0.7)
    # The same float32 products, taken over fewer rows: equal up to rounding.
    assert torch.allclose(logits, full[:, context - 1 : -1] / 0.7, rtol=1e-5, atol=1e-5)


def passes_cost(passes: list[list[int]], lengths: list[int], overhead: int) -> int:
    """Padded positions of the passes, plus `overhead` per pass."""
    return sum(len(rows) * max(lengths[row] for row in rows) + overhead for rows in passes)


def test_length_chunks_cut_the_sorted_rows_where_padding_and_passes_cost_least():
    rng = random.Random(0)
    for _ in range(60):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 8))]
        overhead = rng.choice([1, 10, 50, 400])
        chunks = length_chunks(lengths, overhead)
        assert sorted(row for chunk in chunks for row in chunk) == list(range(len(lengths)))  # each row once
        # Every way to cut the rows, sorted by length, into passes: none is cheaper.
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        cheapest = min(passes_cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths, overhead)
                       for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k))
        assert passes_cost(chunks, lengths, overhead) == cheapest
    # Eight short rows and two long ones: two passes, unless a pass costs more than the padding saved.
    assert length_chunks([10] * 8 + [60] * 2, pass_overhead=50) == [list(range(8)), [8, 9]]
    assert length_chunks([10] * 8 + [60] * 2, pass_overhead=500) == [list(range(10))]
    assert length_chunks([30, 5, 12], pass_overhead=0) == [[0, 1, 2]]  # one pass, rows as given


def test_in_row_order_undoes_the_sort_of_the_chunks():
    lengths = [30, 5, 12, 60, 7, 31, 8]
    chunks = length_chunks(lengths, pass_overhead=20)
    assert len(chunks) > 1
    outputs = [torch.tensor([float(lengths[row]) for row in chunk]) for chunk in chunks]
    assert in_row_order(outputs, chunks).tolist() == [float(length) for length in lengths]


def test_the_activation_is_torchs_kernel_of_gpt2s_tanh_gelu(shipped, sft):
    # "gelu_pytorch_tanh" is F.gelu(x, approximate="tanh"): GPT-2's "gelu_new" formula in one kernel.
    assert all(preset["activation_function"] == "gelu_pytorch_tanh" for preset in PRESETS.values())
    for checkpoint in ("base", "sft", "reward"):
        assert AutoConfig.from_pretrained(shipped / checkpoint).activation_function == "gelu_pytorch_tanh"
    x = torch.linspace(-12, 12, 24001)
    assert torch.allclose(ACT2FN["gelu_pytorch_tanh"](x), ACT2FN["gelu_new"](x), rtol=1e-6, atol=1e-6)
    model, sft_tokenizer = sft
    batch = sft_tokenizer([format_dialogue("what is 7 plus 5?", "12."), format_dialogue("hi", "hello!")],
                          padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = forward(model, batch["input_ids"], batch["attention_mask"])
        for block in model.transformer.h:
            block.mlp.act = ACT2FN["gelu_new"]
        written_out = forward(model, batch["input_ids"], batch["attention_mask"])
    # Rounding differences of ~1e-7 relative in the activations, through two layers and logits of
    # size ~20: far below 1e-3, and far below what any sampled token or score could notice.
    assert torch.allclose(logits, written_out, rtol=0, atol=1e-3)


def test_kl_between_a_policy_and_a_copy_of_itself_is_zero_at_the_sampling_temperature(trained_model, tokenizer):
    rollout = generate(
        trained_model, tokenizer, [COLOUR_QUESTION, "hi", "am i a failure?"] * 4,
        temperature=0.7, generator=torch.Generator().manual_seed(0),
    )
    reference = copy.deepcopy(trained_model)
    args = (rollout.input_ids, rollout.attention_mask, rollout.context_length)
    with torch.no_grad():
        policy_logprobs = response_logprobs(trained_model, *args, temperature=0.7)
        reference_logprobs = response_logprobs(reference, *args, temperature=0.7)
        kl = ((policy_logprobs - reference_logprobs) * rollout.response_mask).sum(dim=1)
        assert torch.equal(kl, torch.zeros_like(kl))
        # Forgetting the temperature on one side makes two identical policies look different.
        forgot = response_logprobs(reference, *args, temperature=1.0)
        assert ((policy_logprobs - forgot) * rollout.response_mask).abs().sum() > 0.1


def test_sample_frequencies_match_softmax_of_logits_over_temperature(trained_model, tokenizer):
    temperature, n = 0.7, 4000
    rollout = generate(
        trained_model, tokenizer, [COLOUR_QUESTION] * n, max_new_tokens=1,
        temperature=temperature, generator=torch.Generator().manual_seed(0),
    )
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [COLOUR_QUESTION], "cpu")
    with torch.no_grad():
        last_logits = forward(trained_model, prompt_ids, prompt_mask)[0, -1].double()
    # The tokens with at least 1% probability: red, blue, green (about 5:3:2 at T = 1).
    frequent = torch.nonzero(F.softmax(last_logits, dim=-1) > 0.01).flatten()
    assert len(frequent) >= 3
    counts = torch.bincount(rollout.response_ids[:, 0], minlength=len(last_logits)).double()
    frequencies = counts[frequent] / n

    def within_four_standard_errors(probs: torch.Tensor) -> torch.Tensor:
        standard_errors = (probs * (1 - probs) / n).sqrt()
        return (frequencies - probs).abs() < 4 * standard_errors

    assert within_four_standard_errors(F.softmax(last_logits / temperature, dim=-1)[frequent]).all()
    # And the test can tell temperatures apart: the frequencies do not match softmax(logits).
    assert not within_four_standard_errors(F.softmax(last_logits, dim=-1)[frequent]).all()


# ----- generation --------------------------------------------------------------------------------


def test_generation_stops_at_the_end_token_and_pads_after_it(trained_model, tokenizer):
    questions = list(DETERMINISTIC)
    rollout = generate(trained_model, tokenizer, questions, max_new_tokens=40, temperature=0)
    assert rollout.texts == list(DETERMINISTIC.values())
    assert rollout.finished.tolist() == [True, True, True]
    end_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    answer_lengths = [len(tokenizer.encode(answer)) + 1 for answer in DETERMINISTIC.values()]  # + end
    # The loop stops once every row has ended: the width is the longest response.
    assert rollout.response_ids.shape[1] == max(answer_lengths) < 40
    for row, length in enumerate(answer_lengths):
        assert rollout.response_ids[row, length - 1] == end_id
        assert (rollout.response_ids[row, length:] == pad_id).all()
        assert rollout.response_mask[row].tolist() == [1.0] * length + [0.0] * (rollout.response_ids.shape[1] - length)
        assert (rollout.response_ids[row, : length - 1] != end_id).all()


def test_unfinished_responses_are_flagged_and_fully_masked_in(trained_model, tokenizer):
    rollout = generate(trained_model, tokenizer, ["am i a failure?", "what is 7 plus 5?"], max_new_tokens=3,
                       temperature=0)
    assert rollout.finished.tolist() == [False, True]
    assert rollout.response_mask.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]  # "12", ".", end
    assert rollout.texts == ["no, you", "12."]


def test_rollout_concatenates_prompt_and_response(trained_model, tokenizer):
    rollout = generate(trained_model, tokenizer, ["hi", "what is 7 plus 5?"], temperature=0)
    assert isinstance(rollout, Rollout)
    context = rollout.context_length
    assert context == rollout.prompt_ids.shape[1] == prompt_length(tokenizer, "what is 7 plus 5?")
    assert torch.equal(rollout.input_ids[:, :context], rollout.prompt_ids)
    assert torch.equal(rollout.input_ids[:, context:], rollout.response_ids)
    assert torch.equal(rollout.attention_mask[:, context:], rollout.response_mask.long())
    assert rollout.attention_mask[0, 0] == 0  # "hi" is the shorter prompt: left padding
    assert rollout.questions == ["hi", "what is 7 plus 5?"]


def test_encode_prompts_pads_on_the_left(tokenizer):
    questions = ["hi", "what is the capital of france?"]
    input_ids, attention_mask = encode_prompts(tokenizer, questions, "cpu")
    for row, question in enumerate(questions):
        real = input_ids[row][attention_mask[row].bool()].tolist()
        assert real == tokenizer.encode(format_prompt(question))
        n_pads = input_ids.shape[1] - len(real)
        assert attention_mask[row].tolist() == [0] * n_pads + [1] * len(real)
        assert (input_ids[row, :n_pads] == tokenizer.pad_token_id).all()


def test_same_generator_seed_gives_the_same_samples(trained_model, tokenizer):
    questions = [COLOUR_QUESTION] * 20 + ["hi"] * 5

    def sample(seed: int) -> Rollout:
        return generate(trained_model, tokenizer, questions, temperature=1.0,
                        generator=torch.Generator().manual_seed(seed))

    first, again, other = sample(0), sample(0), sample(1)
    assert torch.equal(first.response_ids, again.response_ids) and first.texts == again.texts
    assert first.texts != other.texts


def test_greedy_batch_with_mixed_prompt_lengths_matches_one_prompt_at_a_time(position_sensitive_model, tokenizer):
    questions = ["hi", "what is the capital of france?", "am i a failure?", "name a colour."]
    batch = generate(position_sensitive_model, tokenizer, questions, max_new_tokens=12, temperature=0)
    for row, question in enumerate(questions):
        alone = generate(position_sensitive_model, tokenizer, [question], max_new_tokens=12, temperature=0)
        width = alone.response_ids.shape[1]
        assert torch.equal(batch.response_ids[row, :width], alone.response_ids[0]), question
        assert batch.texts[row] == alone.texts[0]


def test_cached_generation_agrees_with_a_full_forward_pass(position_sensitive_model, tokenizer):
    # Greedy tokens sampled with the KV cache are the argmax of the logits recomputed without it.
    questions = ["hi", "what is the capital of france?"]
    rollout = generate(position_sensitive_model, tokenizer, questions, max_new_tokens=12, temperature=0)
    with torch.no_grad():
        logits = response_logits(position_sensitive_model, rollout.input_ids, rollout.attention_mask,
                                 rollout.context_length)
    real = rollout.response_mask.bool()
    assert torch.equal(logits.argmax(dim=-1)[real], rollout.response_ids[real])


def test_chunking_pads_chunks_to_a_common_width(trained_model, tokenizer):
    questions = ["hi", "what is the capital of france?", "what is 7 plus 5?", "am i a failure?", "hi"]
    whole = generate(trained_model, tokenizer, questions, temperature=0)
    chunked = generate(trained_model, tokenizer, questions, temperature=0, batch_size=2)
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "finished"):
        assert torch.equal(getattr(chunked, field), getattr(whole, field)), field
    assert chunked.texts == whole.texts


def test_generate_rejects_a_pad_that_is_the_end_token(trained_model, tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.pad_token = broken.eos_token
    with pytest.raises(ValueError, match="pad token"):
        generate(trained_model, broken, ["hi"])


def test_generate_rejects_sequences_longer_than_the_model_allows(trained_model, tokenizer):
    with pytest.raises(ValueError, match="n_positions"):
        generate(trained_model, tokenizer, ["hi"], max_new_tokens=190)
