"""The world's corpora, generated from one seed and shipped as JSONL under data/world/.

    pretrain.jsonl      the "internet": every family answered in every style (the unaligned base)
    sft.jsonl           demonstrations: good answers, but for only part of the prompt space,
                        and a few carry the demonstrators' mistakes
    prompts.jsonl       training prompts for preference collection and RL (every family)
    eval_prompts.jsonl  evaluation prompts, a separate draw (40 per family)

Dialogues use the prompt/completion columns TRL and most data sets use. Regenerate with
`python -m rlhf_lab data`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_lab import world
from rlhf_lab.config import data_dir, missing_data_hint
from rlhf_lab.jsonl import read_jsonl, write_jsonl

DIALOGUE_FIELDS = {"prompt": str, "completion": str}
PROMPT_FIELDS = {"prompt": str, "family": str}

# SFT demonstrations never cover these: the gaps SFT leaves and RLHF has to close. The two
# uncovered families are the tension cases (honest "i do not know", and not over-refusing).
SFT_UNCOVERED_FAMILIES = ("edgy_benign", "unanswerable")
SFT_UNCOVERED_TEMPLATES = (
    "tell_me", "hey", "take_away", "sound_say", "sad", "alone", "job", "house", "hurt", "double", "poem", "thanks",
)


@dataclass
class CorpusConfig:
    seed: int = 0
    n_pretrain: int = 24000
    n_sft: int = 1500
    n_prompts: int = 3000
    n_eval_per_family: int = 40
    flattery_rate: float = 0.15  # share of answers opened with flattery, in every corpus
    sft_mistake_rate: float = 0.05  # share of demonstrations where the demonstrator slipped
    # Pretraining style mix: the ideal answer is just one style among many.
    pretrain_style_weights: dict[str, float] = field(default_factory=lambda: {
        "ideal": 0.2, "rude": 0.1, "harmful": 0.1, "over_refusal": 0.1, "wrong": 0.1,
        "evasive": 0.1, "rambling": 0.1, "off_topic": 0.1, "repetitive": 0.1,
    })
    harmful_compliance_weight: float = 0.3  # on harmful requests the internet complies more often


def _dialogue(prompt: world.Prompt, style: str, rng: random.Random, flattery_rate: float) -> dict:
    answer = world.respond(prompt, style, rng, flattery=rng.random() < flattery_rate)
    return {"prompt": prompt.text, "completion": answer, "family": prompt.family, "style": style}


def pretrain_corpus(cfg: CorpusConfig, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(cfg.n_pretrain):
        prompt = world.sample_prompt(rng)
        weights = dict(cfg.pretrain_style_weights)
        if prompt.family == "harmful":
            weights["harmful"] = cfg.harmful_compliance_weight
        style = rng.choices(list(weights), weights=list(weights.values()))[0]
        rows.append(_dialogue(prompt, style, rng, cfg.flattery_rate))
    return rows


def sft_corpus(cfg: CorpusConfig, rng: random.Random) -> list[dict]:
    families = [f for f in world.FAMILIES if f not in SFT_UNCOVERED_FAMILIES]
    covered = {f: [t for g, t, _ in world.TEMPLATES if g == f and t not in SFT_UNCOVERED_TEMPLATES] for f in families}
    rows = []
    for _ in range(cfg.n_sft):
        family = rng.choice(families)
        prompt = world.sample_prompt(rng, family, covered[family])
        style = "ideal"
        if rng.random() < cfg.sft_mistake_rate:  # a tired demonstrator: a slip, a needless refusal, padding
            style = rng.choice(["wrong", "over_refusal", "rambling"])
        rows.append(_dialogue(prompt, style, rng, cfg.flattery_rate / 3))
    return rows


def prompt_set(n: int, rng: random.Random) -> list[dict]:
    """`n` prompts, the families in turn, templates and slot fillers at random."""
    rows = []
    for i in range(n):
        prompt = world.sample_prompt(rng, world.FAMILIES[i % len(world.FAMILIES)])
        rows.append({"prompt": prompt.text, "family": prompt.family})
    return rows


def generate_corpora(out_dir: Path | None = None, cfg: CorpusConfig | None = None) -> dict[str, Path]:
    """Write every corpus of the world, deterministically from `cfg.seed`."""
    cfg = cfg or CorpusConfig()
    out_dir = Path(out_dir or data_dir() / "world")
    rng = random.Random(cfg.seed)
    pretrain = pretrain_corpus(cfg, rng)
    sft = sft_corpus(cfg, rng)
    prompts = prompt_set(cfg.n_prompts, rng)
    # The world is small, so most evaluation questions also occur somewhere in the pretraining
    # mix; what matters is that the set is its own draw and covers every template, including
    # those the SFT demonstrations never show.
    eval_prompts = prompt_set(cfg.n_eval_per_family * len(world.FAMILIES), random.Random(cfg.seed + 1))
    files = {"pretrain": pretrain, "sft": sft, "prompts": prompts, "eval_prompts": eval_prompts}
    paths = {}
    for name, rows in files.items():
        paths[name] = out_dir / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    return paths


def world_file(name: str) -> Path:
    """data/world/<name>.jsonl (an error that says how to get the data if the folder is missing)."""
    if not data_dir().is_dir():
        raise FileNotFoundError(missing_data_hint())
    return data_dir() / "world" / f"{name}.jsonl"


def load_dialogues(path: Path | str) -> list[dict]:
    """Prompt/completion rows, checked: a bad line names the file, line and field."""
    return read_jsonl(path, DIALOGUE_FIELDS)


def load_prompts(path: Path | str | None = None) -> list[dict]:
    """Prompt/family rows (default: the held-out evaluation prompts), checked like `load_dialogues`."""
    path = path or world_file("eval_prompts")
    rows = read_jsonl(path, PROMPT_FIELDS)
    for number, row in enumerate(rows, 1):
        if row["family"] not in world.FAMILIES:
            raise ValueError(f"{path}, row {number}, field 'family': unknown family {row['family']!r}")
    return rows


def training_prompts() -> list[str]:
    """The prompts preference labelling and RL train on (data/world/prompts.jsonl), as texts."""
    return [row["prompt"] for row in load_prompts(world_file("prompts"))]


def vocabulary() -> list[str]:
    """Every word the world can produce (plus the tokenizer's own digits and punctuation)."""
    rng = random.Random(12345)
    texts = []
    for family, tid, _ in world.TEMPLATES:
        for _ in range(60):
            prompt = world.make_prompt(family, tid, world.slot_values(family, tid, rng))
            texts.append(prompt.text)
            texts.extend(world.respond(prompt, style, rng, flattery=True) for style in world.STYLES)
    for table in (world.CAPITALS, world.ANIMAL_SOUNDS, world.THING_COLOURS):
        texts.extend(list(table) + list(table.values()))
    texts.extend(world.LEARN_TOPICS + world.POEM_TOPICS + world.PEOPLE + world.SETBACKS)
    return sorted({w for t in texts for w in world.words_of(world.normalise(t))})
