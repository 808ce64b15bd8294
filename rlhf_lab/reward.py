"""Stage 2: the reward model, its Bradley-Terry loss, and its training loop.

A human compares two answers to the same prompt and picks one. Bradley-Terry models that choice
as a coin whose bias depends only on the difference of two hidden scores:

    P(a preferred to b) = σ(r_a - r_b)

Training the reward model r = maximising the likelihood of the observed choices.
"""

import copy
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GPT2ForSequenceClassification,
    GPT2Model,
)

from rlhf_lab import world
from rlhf_lab.checkpoints import atomic_folder, check_checkpoint, check_weights
from rlhf_lab.checks import check_finite
from rlhf_lab.config import for_scale, fused
from rlhf_lab.masked import check_same_shape, weighted_mean
from rlhf_lab.policy import in_row_order, left_pad, length_chunks, position_ids_from_mask, quiet_loading
from rlhf_lab.provenance import write_model_card
from rlhf_lab.tokenizer import format_dialogue, save_tokenizer

# =====================================================================================
# The Bradley-Terry formulas.
# =====================================================================================


def bradley_terry_probability(r_a: Tensor, r_b: Tensor) -> Tensor:
    """P(a preferred to b) = σ(r_a - r_b)."""
    check_same_shape("bradley_terry_probability", r_a=r_a, r_b=r_b)
    return torch.sigmoid(r_a - r_b)


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    weights: Tensor | None = None,
) -> Tensor:
    """Negative log-likelihood of the observed preferences, one pair per entry.

        L = mean_i -log σ(r_chosen_i - r_rejected_i)
        L = sum_i w_i (-log σ(Δ_i)) / sum_i w_i           (with per-pair weights w_i >= 0)

    The weights let some labels count more than others (e.g. the learner's own labels next to
    the simulated human's). `logsigmoid` computes -log σ(Δ) without overflow even for Δ = -1000,
    where log(sigmoid(Δ)) would give log(0) = -inf.
    """
    check_same_shape("bradley_terry_loss", chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    pair_losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return weighted_mean(pair_losses, weights, "bradley_terry_loss")


# =====================================================================================
# The reward model: the SFT backbone plus a scalar head read at the last real token.
# =====================================================================================

HEAD_FILE = "reward_head.safetensors"  # the old two-file layout's head, still read by RewardModel.load
OFFSET_KEY = "reward_offset_in_ln_f"  # config.json: the constant c of the score, folded into ln_f.bias


def last_real_index(attention_mask: Tensor) -> Tensor:
    """Column of each row's last real token: the largest t with mask[t] = 1.

    Works for left padding (prompt), right padding (response) and both at once.
    """
    columns = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (columns * attention_mask.long()).argmax(dim=1)


class RewardModel(nn.Module):
    """score(prompt, answer) = gain * (w · h_last + b) + bias.

    h_last is the backbone's hidden state at the last real token (the end token), which has
    attended to the whole prompt and answer. The head's weights start with standard deviation
    1/sqrt(d + 1) (rule 6 of docs/implementation_rules.md); after training, `gain` and `bias` are
    set so the starting policy's answers score mean 0 and std 1 -- so a reward of +1 means "one
    standard deviation better than SFT".
    """

    def __init__(self, backbone: GPT2Model):
        super().__init__()
        self.backbone = backbone
        width = backbone.config.n_embd
        self.head = nn.Linear(width, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(width + 1))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("gain", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.0))

    @classmethod
    def from_policy(cls, policy) -> "RewardModel":
        """Start from a policy's transformer (InstructGPT started its reward models from SFT)."""
        backbone = GPT2Model(policy.config)
        backbone.load_state_dict(policy.transformer.state_dict())
        return cls(backbone)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """One normalised score per row, `(B,)`."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_real_index(attention_mask)]
        return self.gain * self.head(last).squeeze(-1) + self.bias

    def save(self, out_dir, tokenizer) -> None:
        """Save in Hugging Face's own layout: a `GPT2ForSequenceClassification` with one label (safetensors).

        `AutoModelForSequenceClassification.from_pretrained(out_dir)`, TRL's `reward_funcs=out_dir` and
        `RewardModel.load` all read it and return this model's scores. Our score is

            gain * (w · h + b) + bias  =  w' · h + c,   w' = gain * w,   c = gain * b + bias

        HF's `score` layer holds w' but has no bias, so c is folded into the final layer norm's bias
        (`fold_offset`, exact) and recorded in config.json as `reward_offset_in_ln_f`, from which `load`
        restores the backbone's own layer norm. `pad_token_id` in config.json is how HF finds each row's
        last real token, with right or left padding.

        Left padding needs position ids: HF's forward numbers positions 0, 1, 2, ... from the first
        column whatever the mask (transformers 4.45 to 5.24), so with a left-padded batch pass
        `position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0)` (`policy.position_ids_from_mask`),
        or the padded rows get other scores. TRL pads reward-model inputs on the right: nothing to do.
        """
        out_dir = Path(out_dir)
        score_weight = (self.gain * self.head.weight).detach().cpu()
        offset = float((self.gain * self.head.bias + self.bias).detach())
        config = copy.deepcopy(self.backbone.config)
        config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
        setattr(config, OFFSET_KEY, offset)
        classifier = GPT2ForSequenceClassification(config)
        classifier.transformer.load_state_dict(self.backbone.state_dict())
        with torch.no_grad():
            classifier.score.weight.copy_(score_weight)
            classifier.transformer.ln_f.bias.copy_(fold_offset(self.backbone.ln_f.bias.cpu(), score_weight, offset))
        with atomic_folder(out_dir) as folder:  # all files at once: a crash leaves the old model whole
            classifier.save_pretrained(folder, safe_serialization=True)
            save_tokenizer(tokenizer, folder, model_max_length=config.n_positions)
            write_model_card(folder, target=out_dir)

    @classmethod
    def load(cls, path, device="cpu"):
        """`(reward_model, tokenizer)` from a directory written by `save` (never unpickles).

        Also reads the old two-file layout (a bare `GPT2Model` plus reward_head.safetensors), with a
        warning: Hugging Face cannot read that one, and `convert_checkpoint(path)` rewrites it.
        """
        path = _checked_reward_folder(Path(path))
        if (path / HEAD_FILE).is_file():
            warnings.warn(f"{path}: old reward-model layout (GPT2Model + {HEAD_FILE}), which Hugging Face and TRL "
                          "cannot read; rewrite it with rlhf_lab.reward.convert_checkpoint(path)", stacklevel=2)
            model = cls._from_two_files(path)
        else:
            model = cls._from_classifier(_load_classifier(path))
        return model.to(device).eval(), AutoTokenizer.from_pretrained(path)

    @classmethod
    def _from_classifier(cls, classifier: GPT2ForSequenceClassification) -> "RewardModel":
        """Unfold the saved offset: the backbone gets its own ln_f back, the head gets c as its bias."""
        offset = float(getattr(classifier.config, OFFSET_KEY, 0.0))  # 0 for a classifier trained elsewhere (TRL)
        score_weight = classifier.score.weight.detach()
        backbone = classifier.transformer
        with torch.no_grad():
            backbone.ln_f.bias.copy_(fold_offset(backbone.ln_f.bias, score_weight, -offset))
        model = cls(backbone)
        with torch.no_grad():
            model.head.weight.copy_(score_weight)
            model.head.bias.fill_(offset)
        return model

    @classmethod
    def _from_two_files(cls, path: Path) -> "RewardModel":
        """The layout `save` wrote before the reward model was a `GPT2ForSequenceClassification`."""
        check_weights(path, GPT2Model)
        with quiet_loading():
            model = cls(GPT2Model.from_pretrained(path, use_safetensors=True))
        tensors = load_file(str(path / HEAD_FILE))
        with torch.no_grad():
            model.head.weight.copy_(tensors["weight"])
            model.head.bias.copy_(tensors["head_bias"])
            model.gain.copy_(tensors["gain"])
            model.bias.copy_(tensors["bias"])
        return model


def fold_offset(ln_f_bias: Tensor, score_weight: Tensor, offset: float) -> Tensor:
    """The final layer norm's bias with a constant folded in, for a score layer without a bias:

        ln_f.bias' = ln_f.bias + offset * w / (w · w)   =>   w · h' = w · h + offset

    since ln_f adds its bias to every hidden state last (h' = h + offset * w / (w · w)). The shift lies
    along w: the smallest one that adds `offset`. `-offset` unfolds it again.
    """
    if offset == 0:
        return ln_f_bias.clone()
    w = score_weight.double().reshape(-1)
    if w.dot(w) == 0:
        raise ValueError(f"fold_offset: cannot fold offset {offset} into ln_f: the score weight is all zeros")
    return (ln_f_bias.double() + offset * w.to(ln_f_bias.device) / w.dot(w)).to(ln_f_bias.dtype)


def _checked_reward_folder(path: Path) -> Path:
    """`path`, once `checkpoints.check_checkpoint` found every file of a reward model there and whole."""
    try:
        return check_checkpoint(path, "reward")
    except FileNotFoundError:
        raise FileNotFoundError(f"no reward model at {path.resolve()} (looked for {path / 'config.json'}); "
                                "make one with: python -m rlhf_lab reward --prefs FILE --out DIR") from None


def _load_classifier(path: Path) -> GPT2ForSequenceClassification:
    """The saved `GPT2ForSequenceClassification`, after checking the directory holds one (one label)."""
    config = AutoConfig.from_pretrained(path)
    if "GPT2ForSequenceClassification" not in (config.architectures or []) or config.num_labels != 1:
        raise ValueError(f"{path / 'config.json'}: not a reward model (architectures {config.architectures}, "
                         f"num_labels {config.num_labels}); expected GPT2ForSequenceClassification with one label, "
                         "as written by RewardModel.save (is this a policy checkpoint?)")
    check_weights(path, GPT2ForSequenceClassification)
    with quiet_loading():
        return GPT2ForSequenceClassification.from_pretrained(path, use_safetensors=True)


def convert_checkpoint(path) -> Path:
    """Rewrite an old two-file reward model (GPT2Model + reward_head.safetensors) in place, in `save`'s layout.

    Only the weights change (model.safetensors, config.json; the head file goes); scores stay the same
    to float32 rounding, and the tokenizer and the run's other files (metrics.json, ...) are kept. The
    new folder replaces the old one all at once (`checkpoints.atomic_folder`), so the weights being
    read are never overwritten while in use, and a crash leaves the old layout whole.
    """
    path = Path(path)
    if not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {HEAD_FILE}, so not an old-layout reward model (nothing to convert)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*old reward-model layout")  # what we are acting on
        model, tokenizer = RewardModel.load(path)
    with atomic_folder(path, keep_existing=True, drop=(HEAD_FILE,)) as folder:
        model.save(folder, tokenizer)
    return path


def encode_answers(tokenizer, prompts: list[str], answers: list[str], device) -> tuple[Tensor, Tensor]:
    """Left-padded `<|user|> prompt <|assistant|> answer <|end|>` ids and mask for the reward model."""
    batch = tokenizer([format_dialogue(p, a) for p, a in zip(prompts, answers)], padding=True,
                      return_tensors="pt", add_special_tokens=False)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


@torch.no_grad()
def score_answers(reward_model: RewardModel, tokenizer, prompts: list[str], answers: list[str],
                  batch_size: int = 256) -> Tensor:
    """Reward-model scores of answers given as text, `(N,)` on the CPU."""
    device = next(reward_model.parameters()).device
    scores = []
    for i in range(0, len(prompts), batch_size):
        batch = slice(i, i + batch_size)
        input_ids, attention_mask = encode_answers(tokenizer, prompts[batch], answers[batch], device)
        scores.append(reward_model(input_ids, attention_mask).float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


# =====================================================================================
# Training: one epoch over the pairs, the pairs of one prompt kept in one batch.
# =====================================================================================


@dataclass
class RewardConfig:
    epochs: int = 1  # a single pass over the comparisons, as InstructGPT trained its reward models
    items_per_batch: int = 8  # labelling items per batch; every pair of one item lands in the same batch
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    learner_weight: float = 2.0  # a learner's own label counts twice as much as a simulated one
    heldout_fraction: float = 0.1  # prompts held out to measure accuracy
    normalise_samples: int = 256  # SFT answers the scores are normalised on (mean 0, std 1)
    # A step's answers go through the model in passes of answers of similar length, so that short ones
    # are not padded to the longest (`policy.length_chunks`, which weighs the padding saved against a
    # pass's fixed cost, this many token positions): the same rewards, 1.1-1.8x faster on a CPU. 0: one
    # pass per step (the gpu preset: at our sizes a GPU's cost is per pass, not per position).
    pass_overhead: int = 128
    seed: int = 0


REWARD_PRESETS = {"ci": dict(), "laptop": dict(), "gpu": dict(items_per_batch=16, pass_overhead=0)}


def reward_config(scale: str | None = None, **overrides) -> RewardConfig:
    return for_scale(RewardConfig, REWARD_PRESETS, scale, **overrides)


def pairs_from_records(records, learner_weight: float) -> list[dict]:
    """Training pairs from preference records: ties dropped, learner labels weighted up.

    `group` numbers the labelling items: the pairs of one ranking (or of one prompt's K
    candidates) are stored one after another, so a run of records with the same prompt is one item.
    """
    pairs, group, previous_prompt = [], -1, None
    for r in records:
        if r.prompt != previous_prompt:
            group, previous_prompt = group + 1, r.prompt
        if not r.tie:  # a tie says nothing about which answer is better
            pairs.append({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "group": group,
                          "weight": learner_weight if r.source == "human" else 1.0, "source": r.source})
    return pairs


def split_by_prompt(pairs: list[dict], heldout_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out whole prompts (not single pairs), so held-out accuracy measures generalisation.

    The split is made family by family (at least one prompt of each), so that every family is
    measured even though some have only a handful of distinct questions.
    """
    generator = torch.Generator().manual_seed(seed)
    by_family: dict[str, list[str]] = {}
    for prompt in sorted({p["prompt"] for p in pairs}):
        parsed = world.parse_prompt(prompt)
        by_family.setdefault(parsed.family if parsed else "unknown", []).append(prompt)
    heldout = set()
    for family in sorted(by_family):
        prompts = by_family[family]
        if len(prompts) < 2:  # a family with one question cannot be both trained on and held out
            continue
        order = torch.randperm(len(prompts), generator=generator).tolist()
        heldout.update(prompts[i] for i in order[: max(1, round(len(prompts) * heldout_fraction))])
    return [p for p in pairs if p["prompt"] not in heldout], [p for p in pairs if p["prompt"] in heldout]


def checked_split(pairs: list[dict], heldout_fraction: float, seed: int, source) -> tuple[list[dict], list[dict]]:
    """`split_by_prompt`, refusing (before any training) a file that leaves nothing to train on or to measure."""
    if not pairs:
        raise ValueError(f"{source}: no usable preference pairs (every record is a tie)")
    train_pairs, heldout_pairs = split_by_prompt(pairs, heldout_fraction, seed)
    if not heldout_pairs or not train_pairs:
        prompts = len({pair["prompt"] for pair in pairs})
        raise ValueError(f"{source}: no prompt can be held out to measure accuracy ({prompts} distinct prompt(s); "
                         "a family needs at least two prompts, one to train on and one to hold out); "
                         "label answers to more prompts")
    return train_pairs, heldout_pairs


def item_batches(pairs: list[dict], items_per_batch: int, generator: torch.Generator) -> list[list[dict]]:
    """Batches made of whole labelling items: the C(K,2) pairs of one ranking stay together.

    Shuffling single pairs would put the same answer in many batches of one epoch, and the model
    over-fits to it (InstructGPT, section 3.5); grouping keeps each answer in one batch.
    """
    by_item: dict[object, list[dict]] = {}
    for pair in pairs:
        by_item.setdefault(pair.get("group", pair["prompt"]), []).append(pair)
    groups = list(by_item.values())
    order = torch.randperm(len(groups), generator=generator).tolist()
    return [[pair for g in order[i:i + items_per_batch] for pair in groups[g]]
            for i in range(0, len(order), items_per_batch)]


def dialogue_ids(tokenizer, pairs: list[dict]) -> dict[tuple[str, str], list[int]]:
    """Token ids of every distinct `(prompt, answer)` dialogue of the pairs, as `encode_answers` makes them.

    A training run tokenizes its pairs once, up front, and its batches only pad these lists.
    """
    dialogues = list(dict.fromkeys((p["prompt"], answer) for p in pairs for answer in (p["chosen"], p["rejected"])))
    rows = tokenizer([format_dialogue(prompt, answer) for prompt, answer in dialogues],
                     add_special_tokens=False)["input_ids"]
    return dict(zip(dialogues, rows))


def score_token_rows(reward_model: RewardModel, rows: list[list[int]], pad_id: int, pass_overhead: int = 0) -> Tensor:
    """Scores `(N,)` of dialogues given as token ids, in passes of rows of similar length
    (`policy.length_chunks(lengths, pass_overhead)`; 0: all in one pass)."""
    device = next(reward_model.parameters()).device
    chunks = length_chunks([len(row) for row in rows], pass_overhead)
    scores = [reward_model(*(t.to(device) for t in left_pad([rows[i] for i in chunk], pad_id))) for chunk in chunks]
    return in_row_order(scores, chunks)


def pair_rewards(reward_model: RewardModel, tokenizer, pairs: list[dict],
                 token_ids: dict[tuple[str, str], list[int]] | None = None,
                 pass_overhead: int = 0) -> tuple[Tensor, Tensor]:
    """Rewards of the chosen and the rejected answers, each distinct answer scored once.

    The pairs of one labelling item share their answers (K answers make C(K, 2) pairs, and each
    answer is in K - 1 of them), so each distinct dialogue is scored once and its reward read
    wherever it appears: the same rewards, and the same gradient, from a third of the rows for K = 4.
    `token_ids` (from `dialogue_ids`) saves tokenizing them again; `pass_overhead`: see `score_token_rows`.
    """
    dialogues = [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs]
    row_of = {dialogue: row for row, dialogue in enumerate(dict.fromkeys(dialogues))}
    token_ids = token_ids or dialogue_ids(tokenizer, pairs)
    distinct_rewards = score_token_rows(reward_model, [token_ids[dialogue] for dialogue in row_of],
                                        tokenizer.pad_token_id, pass_overhead)
    rewards = distinct_rewards[torch.tensor([row_of[dialogue] for dialogue in dialogues],
                                            device=distinct_rewards.device)]
    return rewards[: len(pairs)], rewards[len(pairs):]


def train_reward_model(reward_model: RewardModel, tokenizer, pairs: list[dict], cfg: RewardConfig,
                       progress: bool = True) -> pd.DataFrame:
    """Minimise the Bradley-Terry loss over the pairs; returns the per-batch history."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    device = next(reward_model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = fused(torch.optim.AdamW, reward_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    token_ids = dialogue_ids(tokenizer, pairs)  # tokenized once for the run
    history, step = [], 0
    reward_model.train()
    for epoch in range(cfg.epochs):
        batches = item_batches(pairs, cfg.items_per_batch, generator)
        for batch in tqdm(batches, desc=f"reward model, epoch {epoch + 1}", disable=not progress):
            chosen_rewards, rejected_rewards = pair_rewards(reward_model, tokenizer, batch, token_ids,
                                                            cfg.pass_overhead)
            weights = torch.tensor([p["weight"] for p in batch], device=device)
            loss = bradley_terry_loss(chosen_rewards, rejected_rewards, weights)
            check_finite(f"reward model, step {step}", {"the loss": loss}, f"lower the lr, {cfg.lr}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reward_model.parameters(), cfg.grad_clip)
            optimizer.step()
            accuracy = (chosen_rewards > rejected_rewards).float().mean().item()
            history.append({"step": step, "epoch": epoch, "loss": loss.item(), "accuracy": accuracy,
                            "pairs": len(batch)})
            step += 1
    reward_model.eval()
    frame = pd.DataFrame(history)
    frame.attrs["config"] = asdict(cfg)
    return frame


@torch.no_grad()
def normalise_to_policy(reward_model: RewardModel, tokenizer, prompts: list[str],
                        answers: list[str]) -> dict[str, float]:
    """Set gain and bias so these answers (samples of the starting policy) score mean 0, std 1."""
    reward_model.gain.fill_(1.0)
    reward_model.bias.fill_(0.0)
    raw = score_answers(reward_model, tokenizer, prompts, answers)
    mean, std = raw.mean().item(), raw.std().clamp(min=1e-6).item()
    reward_model.gain.fill_(1 / std)
    reward_model.bias.fill_(-mean / std)
    return {"raw_mean": mean, "raw_std": std}
