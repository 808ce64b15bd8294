"""Tiny GPT policies: configs, saving/loading, the forward pass, sampling and log-probs.

The policy is the GPT-2 architecture from `transformers`, trained from scratch at toy sizes. This
module holds the few functions every later lesson relies on, each written so that the classic
RLHF bugs cannot happen (the rules of docs/implementation_rules.md):

- `forward` always passes position ids computed from the attention mask (rule 3: padding);
- `generate` is a short sampling loop: left-padded prompts, plain temperature sampling (rule 2),
  a pad token after the end token, and a mask saying which tokens are real;
- `response_logprobs` reads the log-prob of token t from the logits at position t - 1 (rule 1)
  and divides by the same temperature used for sampling (rule 2).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from rlhf_lab.checkpoints import atomic_folder, check_checkpoint, check_weights
from rlhf_lab.config import PROGRESS_DELAY, SAMPLING_TEMPERATURE
from rlhf_lab.provenance import sampling_generation_config, write_model_card
from rlhf_lab.tokenizer import END, format_prompt, save_tokenizer

# GPT2Config keyword arguments per size. "nano" trains in seconds on a laptop CPU; "small" is for a
# GPU. Dropout is off everywhere (rule 4): with dropout, the log-probs recomputed during the
# PPO update would differ from those at rollout time even before any update (ratio != 1), and
# the KL to the reference would be noisy.
_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# GPT-2's tanh-approximated GELU, computed by torch's own kernel (`F.gelu(x, approximate="tanh")`).
# GPT-2's default name for it, "gelu_new", is the same formula written out in Python operations: the
# same numbers to float32 rounding (logits differ by ~1e-5), and the kernel made our nano policy's
# forward pass ~1.3x and its forward and backward passes ~1.2x faster on a CPU.
_ACTIVATION = {"activation_function": "gelu_pytorch_tanh"}
# Longest prompt + response, in tokens. World dialogues are far shorter.
N_POSITIONS = 192
PRESETS: dict[str, dict] = {
    "nano": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": N_POSITIONS, **_NO_DROPOUT, **_ACTIVATION},
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_positions": N_POSITIONS, **_NO_DROPOUT, **_ACTIVATION},
    "small": {"n_layer": 6, "n_head": 8, "n_embd": 256, "n_positions": N_POSITIONS, **_NO_DROPOUT, **_ACTIVATION},
}


def new_policy(preset: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 of the given preset size, sized to the tokenizer's vocabulary.

    The seed fixes the initial weights without disturbing the caller's global random state.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown policy preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    end_id = tokenizer.convert_tokens_to_ids(END)
    config = GPT2Config(
        vocab_size=len(tokenizer),  # len() counts the special tokens too
        # Our tokenizer has no separate begin token; like GPT-2 itself, begin = end.
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else end_id,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
        **PRESETS[preset],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model


def save_policy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike
) -> None:
    """Save weights (safetensors only), config and tokenizer to `out_dir`, loadable by `load_policy`
    or by `AutoModelForCausalLM.from_pretrained(out_dir)` / `AutoTokenizer.from_pretrained(out_dir)`.

    Safetensors, not pickle: loading a pickled checkpoint can run arbitrary code. The files are
    written beside `out_dir` and replace it all at once (`checkpoints.atomic_folder`): a crash or a
    full disk mid-save leaves the previous checkpoint there, never half of each. The folder also
    gets the course's sampling settings (generation_config.json) and a model card (README.md): see
    `provenance`.
    """
    model.generation_config = sampling_generation_config(model.config)
    with atomic_folder(out_dir) as folder:
        model.save_pretrained(folder, safe_serialization=True)
        save_tokenizer(tokenizer, folder, model_max_length=model.config.n_positions)
        write_model_card(folder, target=out_dir)


def load_policy(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a policy saved by `save_policy`; returns `(model, tokenizer)`, the model in eval mode.

    The folder is checked first (`checkpoints.check_checkpoint`, `check_weights`): a missing, cut
    short or mismatched file is reported by name instead of a traceback from deep in transformers.
    """
    path = Path(path)
    try:
        check_checkpoint(path, "policy")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no policy checkpoint at {path.resolve()} (looked for {path / 'config.json'}); make one with "
            "`python -m rlhf_lab pretrain --out DIR` or `python -m rlhf_lab sft --policy BASE --out DIR`, "
            "or use the shipped data/checkpoints/base and data/checkpoints/sft"
        ) from None
    check_weights(path, AutoModelForCausalLM.from_config)
    with quiet_loading():
        # use_safetensors=True: never fall back to unpickling a .bin file.
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model.to(device).eval(), tokenizer


@contextlib.contextmanager
def quiet_loading():
    """Without transformers' "Loading weights" progress bar: our checkpoints load in milliseconds,
    and a bar per load would bury the progress that matters (and every error message) in noise."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row: `(cumsum(mask) - 1).clamp(min=0)`.

    With left padding, `[pad, pad, x, y]` has mask `[0, 0, 1, 1]` and positions `[0, 0, 0, 1]`:
    x sits at position 0 exactly as in the unpadded `[x, y]`. (Pads get 0; they are masked anyway.)
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def forward(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Logits `(B, L, V)` for a (possibly left-padded) batch.

    Why explicit position ids: GPT-2's forward numbers positions 0, 1, 2, ... from the start of
    the tensor, ignoring the mask, so a prompt padded with two pads would start at position 2 and
    get different logits than the same prompt unpadded. (`model.generate` fixes this internally,
    a plain forward call does not.) Passing positions from the mask makes padding invisible.
    """
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return output.logits


def hidden_states(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The transformer's last hidden states `(B, L, d)`: `forward` without the LM head.

    The LM head (`model.get_output_embeddings()`, a d x V matrix) then runs only on the positions
    whose predictions are scored: with a vocabulary of V = 711 words it costs as much per position
    as a whole transformer layer of the nano policy.
    """
    output = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return output.last_hidden_state


def _model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad lists of ids to one length: `(ids, mask)` with mask 1 on real tokens."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.long)
    return ids, mask


def length_chunks(lengths: list[int], pass_overhead: int) -> list[list[int]]:
    """Row indices in chunks of rows of similar length, one forward pass each (0: one chunk, rows as given).

    A padded batch is as wide as its longest row, so a batch of dialogues of 10 to 60 tokens spends
    half its positions on padding. Rows of similar length in a pass of their own waste little, but
    each pass also has a fixed cost (its calls into torch and transformers), `pass_overhead` token
    positions' worth. So the rows, sorted by length, are cut where it costs least in all:

        cost(pass) = rows × longest row + pass_overhead,   best[j] = min_i best[i] + cost(rows i..j-1)

    (a dynamic programme over the sorted rows; rows of one length always share a pass). Each row's
    output does not depend on the rows beside it (rule 3): this changes how fast, not what is computed.
    """
    if pass_overhead < 1:
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    longest = [lengths[row] for row in order]
    ends = [j for j in range(1, len(order) + 1) if j == len(order) or longest[j] != longest[j - 1]]
    best, cut = {0: 0}, {}
    for j in ends:
        best[j], cut[j] = min((best[i] + (j - i) * longest[j - 1] + pass_overhead, i) for i in [0, *ends] if i < j)
    chunks, end = [], len(order)
    while end:
        chunks.append(order[cut[end]:end])
        end = cut[end]
    return chunks[::-1]


def in_row_order(chunk_outputs: list[torch.Tensor], chunks: list[list[int]]) -> torch.Tensor:
    """The outputs of `length_chunks`' chunks, concatenated and put back in the rows' own order."""
    order = torch.tensor([row for chunk in chunks for row in chunk])
    return torch.cat(chunk_outputs)[order.argsort().to(chunk_outputs[0].device)]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, questions: list[str], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask `(B, P)` of `<|user|> {question} <|assistant|>`, LEFT-padded.

    Left padding puts every prompt's last real token in the last column, so the next token of
    every row is sampled from the same place and appended right after its own prompt.
    """
    if not questions:
        raise ValueError("encode_prompts needs at least one question")
    encoded = tokenizer([format_prompt(q) for q in questions], add_special_tokens=False)
    ids, mask = left_pad(encoded["input_ids"], tokenizer.pad_token_id)
    return ids.to(device), mask.to(device)


@dataclass
class Rollout:
    """A batch of sampled responses, with everything later stages need.

    `response_ids[i]` holds the sampled tokens up to and including the end token, then the pad id.
    `response_mask[i]` is 1.0 on the real response tokens (the end token included: stopping is an
    action the policy is rewarded for) and 0.0 after it. Because the pad is not the end token,
    "where does the response end" is never ambiguous.
    """

    questions: list[str]
    prompt_ids: torch.Tensor  # (B, P) long, left-padded
    prompt_mask: torch.Tensor  # (B, P) long, 0 on padding
    response_ids: torch.Tensor  # (B, T) long, pad id after the end token
    response_mask: torch.Tensor  # (B, T) float, 1.0 up to and including the end token
    finished: torch.Tensor  # (B,) bool, True if the end token was produced
    texts: list[str]  # decoded responses, without special tokens

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and response, `(B, P + T)`."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """Mask of `input_ids`: padding before the prompt and after the end token is 0."""
        return torch.cat([self.prompt_mask, self.response_mask.to(self.prompt_mask.dtype)], dim=1)

    @property
    def context_length(self) -> int:
        """P: the response starts at column P of `input_ids`."""
        return self.prompt_ids.shape[1]


def _sample_next_token(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row from `softmax(logits / temperature)`; `temperature == 0` is greedy.

    Plain temperature sampling: no top-k, no top-p, no minimum length (rule 2). Those
    change the distribution we sample from without changing the log-probs we compute later, so
    the KL estimate to the reference can even go negative.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    # Sample where the generator lives (a CPU generator keeps CPU and GPU runs comparable).
    device = generator.device if generator is not None else probs.device
    # torch.multinomial draws a random number per row *and* token (a third of generation's time in a
    # CPU profile); one uniform number per row and a search in the cumulative probabilities (inverse
    # CDF) draws from the same distribution, faster, but with a different random stream, so every sampled number of the
    # course would move (within its seeds' noise, measured: PPO's mean score 2.80 against 2.81 over
    # 3 seeds x 2 evaluation seeds). We keep multinomial so that published numbers repeat exactly.
    tokens = torch.multinomial(probs.to(device), num_samples=1, generator=generator)
    return tokens.squeeze(1).to(logits.device)


def _cache_argument_name(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument: `past_key_values`, renamed `cache` in transformers 5.24."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


@torch.no_grad()
def _generate_chunk(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    generator: torch.Generator | None,
    end_id: int,
    pad_id: int,
    on_step=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses for one left-padded batch; returns `(response_ids, finished)`. `on_step()` after each token."""
    batch_size = prompt_ids.shape[0]
    device = prompt_ids.device
    response_ids = torch.full((batch_size, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    attention_mask = prompt_mask
    step_input = prompt_ids  # the whole prompt first, then one new token per step
    # The KV cache: keys and values of the tokens seen so far, so each step only runs the new
    # token through the model. Passed back exactly as returned (a tuple or a Cache object,
    # depending on the transformers version).
    cache_name = _cache_argument_name(model)
    cache = None
    length = 0
    for step in range(max_new_tokens):
        # Positions of the tokens fed this step, counted over real tokens only (see `forward`).
        position_ids = position_ids_from_mask(attention_mask)[:, -step_input.shape[1] :]
        output = model(
            input_ids=step_input,
            attention_mask=attention_mask,  # covers the cached tokens and the new ones
            position_ids=position_ids,
            use_cache=True,
            **{cache_name: cache},
        )
        cache = getattr(output, cache_name)
        next_token = _sample_next_token(output.logits[:, -1, :], temperature, generator)
        # Rows that already ended get the pad token: it is masked out and never scored.
        next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
        response_ids[:, step] = next_token
        finished |= next_token == end_id
        length = step + 1
        if on_step is not None:
            on_step()
        if finished.all():
            break
        step_input = next_token[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
    return response_ids[:, :length], finished


def _response_mask(response_ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """1.0 up to and including the first end token, 0.0 after it (all 1.0 if there is none)."""
    is_end = (response_ids == end_id).long()
    ends_before = is_end.cumsum(dim=1) - is_end  # end tokens strictly before each position
    return (ends_before == 0).float()


def _join_chunks(prompt_chunks: list, response_chunks: list, pad_id: int):
    """One batch from chunks of different widths: prompts padded on the left, responses on the right."""
    prompt_width = max(ids.shape[1] for ids, _ in prompt_chunks)
    response_width = max(ids.shape[1] for ids in response_chunks)
    prompt_ids = torch.cat([F.pad(ids, (prompt_width - ids.shape[1], 0), value=pad_id) for ids, _ in prompt_chunks])
    prompt_mask = torch.cat([F.pad(mask, (prompt_width - mask.shape[1], 0), value=0) for _, mask in prompt_chunks])
    response_ids = torch.cat([F.pad(ids, (0, response_width - ids.shape[1]), value=pad_id) for ids in response_chunks])
    return prompt_ids, prompt_mask, response_ids


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    max_new_tokens: int = 48,
    temperature: float = SAMPLING_TEMPERATURE,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> Rollout:
    """Sample one response per question with plain temperature sampling (0 = greedy).

    Stops when every row has produced the end token or after `max_new_tokens`. Reproducible with
    a `torch.Generator` (e.g. `torch.Generator().manual_seed(0)`). Prompts are processed in chunks
    of `batch_size`; the tensors of all chunks are padded to a common width. The model is put in
    eval mode (a trainer switches it back with `model.train()`) and on whatever device it is,
    the returned tensors are there too. `progress`: a bar over the decoding steps, shown if it takes
    more than a couple of seconds (off by default: a trainer's rollouts are under the trainer's own bar).
    """
    if not questions:
        raise ValueError("generate needs at least one question")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    end_id = tokenizer.convert_tokens_to_ids(END)
    pad_id = tokenizer.pad_token_id
    if pad_id is None or pad_id == end_id:
        raise ValueError("the tokenizer needs a pad token that is not the end token (rule 3)")
    device = _model_device(model)
    model.eval()

    prompt_chunks, response_chunks, finished_chunks = [], [], []
    starts = range(0, len(questions), batch_size)
    bar = tqdm(total=len(starts) * max_new_tokens, desc=f"sampling {len(questions)} answers", unit="step",
               disable=not progress, delay=PROGRESS_DELAY, leave=False)
    for start in starts:
        prompt_ids, prompt_mask = encode_prompts(tokenizer, questions[start : start + batch_size], device)
        longest = int(prompt_mask.sum(dim=1).max()) + max_new_tokens
        if longest > model.config.n_positions:
            raise ValueError(f"prompt + max_new_tokens = {longest} tokens exceeds the model's "
                             f"n_positions = {model.config.n_positions}")
        response_ids, finished = _generate_chunk(
            model, prompt_ids, prompt_mask, max_new_tokens, temperature, generator, end_id, pad_id, bar.update
        )
        bar.update(max_new_tokens - response_ids.shape[1])  # the steps a chunk that ended early did not need
        prompt_chunks.append((prompt_ids, prompt_mask))
        response_chunks.append(response_ids)
        finished_chunks.append(finished)
    bar.close()

    prompt_ids, prompt_mask, response_ids = _join_chunks(prompt_chunks, response_chunks, pad_id)
    response_mask = _response_mask(response_ids, end_id)
    # skip_special_tokens drops the end token and the pads.
    texts = tokenizer.batch_decode(response_ids.tolist(), skip_special_tokens=True)
    return Rollout(questions=list(questions), prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                   response_ids=response_ids, response_mask=response_mask,
                   finished=torch.cat(finished_chunks), texts=[text.strip() for text in texts])


def response_logits(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    context_length: int, temperature: float = 1.0) -> torch.Tensor:
    """Logits `(B, T, V)` that predict the response tokens `input_ids[:, context_length:]`.

    Why `[ctx - 1 : -1]`: the logits at position t are the model's prediction for token t + 1.
    So response token ctx is predicted at position ctx - 1, and the last position (which
    predicts a token after the sequence) is dropped (rule 1). Divided by the sampling
    temperature, so these are the logits of the distribution the tokens were sampled from.
    The LM head runs on those positions only: the prompt's predictions are never scored.
    """
    hidden = hidden_states(model, input_ids, attention_mask)[:, context_length - 1 : -1]
    return model.get_output_embeddings()(hidden) / temperature


def response_logprobs(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      context_length: int, temperature: float = 1.0) -> torch.Tensor:
    """Log-prob `(B, T)` of each response token under the policy at `temperature`:

        logp_t = log_softmax(logits[:, ctx-1:-1] / T)[token_t],  token_t = input_ids[:, ctx + t]

    Use the same T as when sampling (rule 2), or the "policy" whose log-probs you compute
    is not the one that produced the samples. Entries after the end token are meaningless:
    multiply by the response mask.
    """
    logits = response_logits(model, input_ids, attention_mask, context_length, temperature)
    return token_logprobs(logits, input_ids[:, context_length:])


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`log_softmax(logits)[token]` at every position: `(B, T, V)` logits and `(B, T)` tokens -> `(B, T)`."""
    return F.log_softmax(logits.float(), dim=-1).gather(dim=-1, index=tokens.unsqueeze(-1)).squeeze(-1)
