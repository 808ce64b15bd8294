"""Stage 2: the reward model, its Bradley-Terry loss, and its training loop.

A human compares two answers to the same prompt and picks one. Bradley-Terry models that choice
as a coin whose bias depends only on the difference of two hidden scores:

    P(a preferred to b) = σ(r_a - r_b)

Training the reward model r = maximising the likelihood of the observed choices.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GPT2Model

from rlhf_lab import world
from rlhf_lab.checks import check_finite
from rlhf_lab.config import for_scale
from rlhf_lab.masked import check_same_shape, weighted_mean
from rlhf_lab.policy import position_ids_from_mask, quiet_loading
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

HEAD_FILE = "reward_head.safetensors"


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
        """Backbone as a safetensors transformers checkpoint, head in its own safetensors file."""
        out_dir = Path(out_dir)
        self.backbone.save_pretrained(out_dir, safe_serialization=True)
        save_file({name: t.detach().cpu().contiguous() for name, t in
                   {"weight": self.head.weight, "head_bias": self.head.bias, "gain": self.gain,
                    "bias": self.bias}.items()}, str(out_dir / HEAD_FILE))
        save_tokenizer(tokenizer, out_dir)

    @classmethod
    def load(cls, path, device="cpu"):
        """`(reward_model, tokenizer)` from a directory written by `save` (never unpickles)."""
        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise FileNotFoundError(f"no reward model at {path.resolve()} (looked for {path / HEAD_FILE}); "
                                    "make one with: python -m rlhf_lab reward --prefs FILE --out DIR")
        with quiet_loading():
            model = cls(GPT2Model.from_pretrained(path, use_safetensors=True))
        tensors = load_file(str(path / HEAD_FILE))
        with torch.no_grad():
            model.head.weight.copy_(tensors["weight"])
            model.head.bias.copy_(tensors["head_bias"])
            model.gain.copy_(tensors["gain"])
            model.bias.copy_(tensors["bias"])
        return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


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
    epochs: int = 1  # InstructGPT: more than one epoch over-fits the comparisons
    items_per_batch: int = 8  # labelling items per batch; every pair of one item lands in the same batch
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    learner_weight: float = 2.0  # a learner's own label counts twice as much as a simulated one
    heldout_fraction: float = 0.1  # prompts held out to measure accuracy
    normalise_samples: int = 256  # SFT answers the scores are normalised on (mean 0, std 1)
    seed: int = 0


REWARD_PRESETS = {"ci": dict(), "laptop": dict(), "gpu": dict(items_per_batch=16)}


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
        if not r.tie and r.chosen != r.rejected:
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


def pair_rewards(reward_model: RewardModel, tokenizer, pairs: list[dict]) -> tuple[Tensor, Tensor]:
    """Rewards of the chosen and the rejected answers, in one forward pass."""
    device = next(reward_model.parameters()).device
    prompts = [p["prompt"] for p in pairs]
    input_ids, attention_mask = encode_answers(
        tokenizer, prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], device)
    rewards = reward_model(input_ids, attention_mask)
    return rewards[: len(pairs)], rewards[len(pairs):]


def train_reward_model(reward_model: RewardModel, tokenizer, pairs: list[dict], cfg: RewardConfig,
                       progress: bool = True) -> pd.DataFrame:
    """Minimise the Bradley-Terry loss over the pairs; returns the per-batch history."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    device = next(reward_model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(reward_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, step = [], 0
    reward_model.train()
    for epoch in range(cfg.epochs):
        batches = item_batches(pairs, cfg.items_per_batch, generator)
        for batch in tqdm(batches, desc=f"reward model, epoch {epoch + 1}", disable=not progress):
            chosen_rewards, rejected_rewards = pair_rewards(reward_model, tokenizer, batch)
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
