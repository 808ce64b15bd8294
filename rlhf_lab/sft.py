"""Stage 1: teach a model to talk (pretraining), then to act like an assistant (SFT).

Both are next-token prediction with cross-entropy; the only difference is *which* tokens count:

    pretraining:  every token of the dialogue            (learn the language, all styles)
    SFT:          only the answer's tokens (and <|end|>) (imitate the demonstrator, not the user)

The loss is masked rather than the prompt dropped because the model still has to *read* the
prompt to answer it; it just should not be trained to *write* user questions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from rlhf_lab.checks import check_finite
from rlhf_lab.config import autocast, for_scale, fused
from rlhf_lab.policy import hidden_states, token_logprobs
from rlhf_lab.tokenizer import format_dialogue, format_prompt


@dataclass
class LMConfig:
    """Hyperparameters of one language-model training run (pretraining or SFT)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    response_only: bool = False  # True for SFT: loss on the answer tokens only
    seed: int = 0
    log_every: int = 10
    # bf16 autocast on a recent CUDA GPU (config.autocast); always float32 on a CPU. Off by default:
    # at our model sizes it ran ~10x slower than float32 on an H200 (benchmarks/bench_training.py).
    mixed_precision: bool = False


PRETRAIN_PRESETS = {  # laptop: about 2.5 minutes on two CPU cores for the nano policy
    "ci": dict(steps=100, batch_size=32, lr=3e-3),
    "laptop": dict(steps=3000, batch_size=64, lr=3e-3),
    "gpu": dict(steps=6000, batch_size=128, lr=1e-3, warmup_steps=200),
}
SFT_PRESETS = {
    "ci": dict(steps=60, batch_size=32, lr=3e-4, warmup_steps=10, response_only=True),
    "laptop": dict(steps=300, batch_size=32, lr=3e-4, warmup_steps=20, response_only=True),
    "gpu": dict(steps=600, batch_size=64, lr=3e-4, warmup_steps=30, response_only=True),
}


def pretrain_config(scale: str | None = None, **overrides) -> LMConfig:
    return for_scale(LMConfig, PRETRAIN_PRESETS, scale, **overrides)


def sft_config(scale: str | None = None, **overrides) -> LMConfig:
    return for_scale(LMConfig, SFT_PRESETS, scale, **overrides)


def encode_dialogues(tokenizer, rows: list[dict]) -> list[tuple[list[int], int]]:
    """Token ids of each `prompt`/`completion` row, and how many of them belong to the prompt."""
    encoded = []
    for row in rows:
        prompt_ids = tokenizer.encode(format_prompt(row["prompt"]))
        ids = tokenizer.encode(format_dialogue(row["prompt"], row["completion"]))
        assert ids[: len(prompt_ids)] == prompt_ids, "the dialogue must start with its prompt"
        encoded.append((ids, len(prompt_ids)))
    return encoded


def collate(examples: list[tuple[list[int], int]], pad_id: int, response_only: bool):
    """Left-pad a batch: `(input_ids, attention_mask, loss_mask)`.

    loss_mask[i, t] = 1 where token t is a target: a real token, and for SFT an answer token.
    """
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width))
    for row, (ids, prompt_length) in enumerate(examples):
        start = width - len(ids)
        input_ids[row, start:] = torch.tensor(ids)
        attention_mask[row, start:] = 1
        first_target = start + (prompt_length if response_only else 1)
        loss_mask[row, first_target:] = 1.0
    return input_ids, attention_mask, loss_mask


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged over target tokens only.

    loss = -sum_t mask_t * log p(x_t | x_<t) / sum_t mask_t, with p(x_t | x_<t) read from the
    logits at position t - 1 (the same one-position shift as rule 1 of docs/implementation_rules.md).
    """
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target_logprobs = logprobs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = loss_mask[:, 1:]
    return -(target_logprobs * mask).sum() / mask.sum().clamp(min=1)


def model_lm_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  loss_mask: torch.Tensor) -> torch.Tensor:
    """`lm_loss` of the model on a batch, with the LM head run only where it predicts a target.

    The same number as `lm_loss(forward(model, ...), ...)`, for less work: the logits at a
    prompt or pad position are never scored, and in an SFT batch those are about half of all
    positions (the LM head of our nano policy costs as much as a transformer layer).
    """
    mask = loss_mask[:, 1:]
    is_target = mask.bool()  # position t - 1 predicts target token t
    hidden = hidden_states(model, input_ids, attention_mask)[:, :-1][is_target]  # (N, d)
    target_logprobs = token_logprobs(model.get_output_embeddings()(hidden), input_ids[:, 1:][is_target])
    return -(target_logprobs * mask[is_target]).sum() / mask.sum().clamp(min=1)


def length_bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator):
    """Endless random batches of examples of similar length.

    Padding every row to the longest in its batch wastes compute on pad tokens; grouping rows of
    similar length first (within random pools of 50 batches, so batches stay varied) halves the
    cost of a step here. Each pass over the data is a new random order.
    """
    pool = batch_size * 50
    while True:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool], key=lengths.__getitem__)
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[b]


def learning_rate(step: int, cfg: LMConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_language_model(model, tokenizer, rows: list[dict], cfg: LMConfig, progress: bool = True,
                         desc: str = "train", heldout_rows: list[dict] | None = None,
                         eval_every: int = 50) -> pd.DataFrame:
    """The training loop: sample a batch, compute the masked loss, step. Returns the loss history.

    With `heldout_rows` (dialogues kept out of training), the history also has a `heldout_loss`
    column: the same masked loss on them, every `eval_every` steps and at the last step (NaN on the
    other rows), measured on the same model as that row's training loss, before the step's update.
    Evaluating draws no random numbers: the model trained is the same with or without it.
    """
    if not rows:
        raise ValueError("no training rows: the dialogue file is empty")
    if heldout_rows is not None and (not heldout_rows or eval_every < 1):
        raise ValueError(f"train_language_model: heldout_rows needs at least one row (got {len(heldout_rows)}) "
                         f"and eval_every at least 1 (got {eval_every})")
    device = next(model.parameters()).device
    examples = encode_dialogues(tokenizer, rows)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = fused(torch.optim.AdamW, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                      betas=(0.9, 0.95))
    model.train()  # dropout is 0 in our presets, so train mode only matters for correctness
    batches = length_bucketed_batches([len(ids) for ids, _ in examples], cfg.batch_size, generator)
    history, tokens_seen, start = [], 0, time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress)
    for step in bar:
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch_index = next(batches)
        evaluate_now = heldout_rows is not None and (step % eval_every == 0 or step == cfg.steps - 1)
        heldout = heldout_loss(model, tokenizer, heldout_rows, cfg.response_only) if evaluate_now else math.nan
        input_ids, attention_mask, loss_mask = (
            t.to(device)
            for t in collate([examples[i] for i in batch_index], tokenizer.pad_token_id, cfg.response_only))
        with autocast(device, cfg.mixed_precision):
            loss = model_lm_loss(model, input_ids, attention_mask, loss_mask)
        check_finite(f"{desc}, step {step}", {"the loss": loss}, f"lower the lr, {cfg.lr}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        tokens_seen += int(attention_mask.sum())
        if step % cfg.log_every == 0 or step == cfg.steps - 1 or evaluate_now:
            elapsed = time.perf_counter() - start
            history.append({"step": step, "loss": loss.item(), "lr": lr, "tokens": tokens_seen,
                            "tokens_per_s": tokens_seen / elapsed, **({} if heldout_rows is None else
                                                                       {"heldout_loss": heldout})})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    frame = pd.DataFrame(history)
    frame.attrs["config"] = asdict(cfg)
    return frame


@torch.no_grad()
def heldout_loss(model, tokenizer, rows: list[dict], response_only: bool = True, batch_size: int = 64) -> float:
    """Average masked loss on `rows` (no training): how well the model imitates them."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    examples = encode_dialogues(tokenizer, rows)
    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        input_ids, attention_mask, loss_mask = (
            t.to(device) for t in collate(examples[i:i + batch_size], tokenizer.pad_token_id, response_only))
        n = loss_mask[:, 1:].sum().item()
        total += model_lm_loss(model, input_ids, attention_mask, loss_mask).item() * n
        count += n
    model.train(was_training)
    return total / max(count, 1)
