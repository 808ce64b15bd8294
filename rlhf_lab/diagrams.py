"""The course's diagrams: the roadmap, the RLHF pipeline and one picture per key mechanism.

Every function draws one figure with matplotlib alone and returns it (a `matplotlib.figure.Figure`
made without pyplot, so nothing pops up, nothing is kept in pyplot's list of open figures, and it
works headless; as a notebook cell's last value it shows itself, see `Diagram`). Each takes an
optional `ax` to draw into and an optional `path` to save to (`.svg` or `.png`). Nothing is drawn
when the module is imported.

    course_roadmap      lessons 01-08 and what each one produces
    rlhf_pipeline       the three stages of RLHF and the artefacts between them
    sft_loss_mask       the prompt-masked SFT loss: which tokens count, and the one-position shift
    ranking_to_pairs    a ranking of K answers becomes C(K, 2) pairs, kept together as one item
    reward_head         the reward model reads one scalar at the last real token, then normalises it
    ppo_four_models     PPO's four models and what flows between them
    per_token_reward    -β·KL_t on every token, the reward model's score on the last real one
    reward_kl_frontier  proxy and true score against KL: over-optimisation (schematic)

`python -m rlhf_lab.diagrams` writes all of them to notebooks/figures/ as SVG. The SVG bytes are
deterministic (a fixed hash salt for element ids, no date) so regenerating changes nothing unless
a drawing changed; tests/test_diagrams.py checks the committed files against a fresh run.

Colours mean the same thing in every figure (and match `plotting`'s curves): orange is a policy
being trained, blue the reward model and its score (the proxy), green the simulated human's true
score, red the KL to the reference, purple the critic, grey a frozen model, sand data.
"""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from rlhf_lab.tokenizer import ASSISTANT, END, PAD, USER

COLOURS = {
    "policy": "#ff7f0e",  # a policy being trained (SFT, PPO): matplotlib's tab:orange
    "reward": "#1f77b4",  # the reward model and its score, the proxy (plotting's tab:blue)
    "true": "#2ca02c",  # the simulated human's score, the truth (plotting's tab:green)
    "kl": "#d62728",  # KL to the reference and its penalty (plotting's tab:red)
    "critic": "#9467bd",  # the value model
    "frozen": "#7f7f7f",  # a frozen model: the base model, the reference
    "data": "#b8860b",  # prompts, demonstrations, answers, preference pairs
    "off": "#bdbdbd",  # masked out, padding
}
TEXT = "#222222"
FONT = 11  # body text in points; figures are about 9.5 in wide, so this stays ~13 px on a 900 px page
SMALL = 10  # the smallest text in any figure
MONO = "DejaVu Sans Mono"  # tokens; shipped with matplotlib, like DejaVu Sans, so layout is the same everywhere
# Style for drawing and saving: the fonts matplotlib ships (same metrics on every machine) and SVG
# output that is byte-for-byte repeatable (fixed hash salt for ids; text drawn as paths so it looks
# the same in a browser without DejaVu).
STYLE = {"font.family": "DejaVu Sans", "mathtext.fontset": "dejavusans", "svg.hashsalt": "rlhf-lab",
         "svg.fonttype": "path", "axes.titlesize": 13, "axes.labelsize": FONT, "xtick.labelsize": SMALL,
         "ytick.labelsize": SMALL, "legend.fontsize": SMALL, "font.size": FONT}
FIGURES_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "figures"


# =====================================================================================
# Drawing helpers: a canvas in inches, boxes, arrows, token strips, saving.
# =====================================================================================


class Diagram(Figure):
    """A matplotlib Figure that shows itself in a notebook (as a PNG) when it is a cell's value.

    The figures are made without pyplot, so the inline backend does not show them at the end of a
    cell; IPython calls `_repr_png_` instead, with or without `%matplotlib inline`, once.
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        with matplotlib.rc_context(STYLE):
            self.savefig(buffer, format="png", dpi=100, facecolor="white")
        return buffer.getvalue()


def tint(colour: str, amount: float = 0.8) -> tuple[float, float, float]:
    """`colour` mixed with `amount` of white: the light fill of a box whose edge is `colour`."""
    return tuple(c + (1 - c) * amount for c in to_rgb(colour))


@dataclass(frozen=True)
class Box:
    """Where a drawn box sits (centre, width, height), with the points arrows attach to."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.h / 2)


def canvas(ax, width: float, height: float, title: str | None = None):
    """`(figure, axes)` whose data units are inches: (0, 0) bottom left, (width, height) top right.

    With `ax` given, draw into it instead (its units are still these, stretched to fit).
    """
    with matplotlib.rc_context(STYLE):
        if ax is None:
            fig = Diagram(figsize=(width, height))
            ax = fig.add_axes((0, 0, 1, 1))
        else:
            fig = ax.figure
            ax.set_aspect("equal")
        ax.set(xlim=(0, width), ylim=(0, height))
        ax.axis("off")
        if title:
            note(ax, width / 2, height - 0.22, title, size=13, weight="bold")
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str = "", kind: str = "data", fontsize: float = FONT,
        dashed: bool = False, fill: float = 0.82, **text_style) -> Box:
    """A rounded box centred at (x, y), filled with a tint of its kind's colour, with centred text."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=tint(COLOURS[kind], fill), edgecolor=COLOURS[kind], linewidth=1.6,
                                linestyle=(0, (4, 2)) if dashed else "-"))
    if text:
        ax.text(x, y, text, **{"ha": "center", "va": "center", "fontsize": fontsize, "color": TEXT,
                               "linespacing": 1.25, **text_style})
    return Box(x, y, w, h)


def arrow(ax, start, end, colour: str = TEXT, label: str | None = None, label_at: tuple[float, float] | None = None,
          curve: float = 0.0, dashed: bool = False, width: float = 1.5, **label_style):
    """An arrow from `start` to `end` (points in inches), optionally curved and labelled.

    The label, in the arrow's colour, sits at `label_at` or just above the arrow's middle.
    """
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                 color=colour, linewidth=width, shrinkA=2, shrinkB=2,
                                 connectionstyle=f"arc3,rad={curve}", linestyle=(0, (4, 2)) if dashed else "-"))
    if label:
        note(ax, *(label_at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.17)), label, colour=colour,
             **label_style)


def token_width(token: str, fontsize: float) -> float:
    """Width in inches of a token's box: its text in the monospaced font plus a margin."""
    return (max(len(token), 2) * 0.6 * fontsize + 9) / 72  # DejaVu Sans Mono: 0.6 em per character


def token_strip(ax, tokens: Sequence[str], x0: float, y: float, kinds: Sequence[str], fontsize: float = SMALL,
                height: float = 0.36, gap: float = 0.05, widths: Sequence[float] | None = None) -> list[Box]:
    """One box per token, left to right from x0, coloured by `kinds` (a COLOURS key per token).

    Box widths fit each token's text, or are `widths` (to line a row up under another strip).
    """
    boxes, x = [], x0
    widths = widths or [token_width(token, fontsize) for token in tokens]
    for token, kind, w in zip(tokens, kinds, widths):
        # center_baseline: "." sits on the baseline like the letters, not floating in the box's middle
        boxes.append(box(ax, x + w / 2, y, w, height, token, kind, fontsize=fontsize, family=MONO,
                         va="center_baseline", color="#777777" if token == PAD else TEXT))
        x += w + gap
    return boxes


def strip_width(tokens: Sequence[str], fontsize: float = SMALL, gap: float = 0.05) -> float:
    return sum(token_width(t, fontsize) + gap for t in tokens) - gap


def note(ax, x: float, y: float, text: str, size: float = SMALL, colour: str = TEXT, ha: str = "center",
         **style) -> None:
    """Text centred vertically at (x, y): a label, a caption, a formula (`ha` aligns it horizontally)."""
    ax.text(x, y, text, **{"ha": ha, "va": "center", "fontsize": size, "color": colour, "linespacing": 1.2, **style})


def brace(ax, left: float, right: float, y: float, text: str, colour: str = TEXT, below: bool = True) -> None:
    """A bracket from `left` to `right` at height y with a label under (or over) it: groups a run of boxes."""
    tick = 0.08 if below else -0.08
    ax.plot([left, left, right, right], [y + tick, y, y, y + tick], color=colour, linewidth=1.2)
    note(ax, (left + right) / 2, y - 0.18 if below else y + 0.18, text, colour=colour)


def save(fig: Figure, path: str | Path | None) -> Figure:
    """Save to `path` (format from the suffix) if given; SVG bytes are deterministic (no date, fixed ids)."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context(STYLE):
            metadata = {"Date": None} if path.suffix == ".svg" else {"Software": None}
            fig.savefig(path, dpi=100, facecolor="white", metadata=metadata)
    return fig


# =====================================================================================
# Lesson 01: the course and the pipeline.
# =====================================================================================

ROADMAP = [  # (lesson, title, what it produces, colour of what it produces)
    ("01", "Why alignment", "the base model\nmisbehaving, measured", "frozen"),
    ("02", "SFT", "the SFT policy", "policy"),
    ("03", "Preferences", "preference pairs\n(yours + simulated)", "data"),
    ("04", "Reward model", "a reward model", "reward"),
    ("05", "PPO", "a policy aligned\nby PPO", "policy"),
    ("06", "KL & reward hacking", "the reward–KL\nfrontier", "kl"),
    ("07", "Beyond PPO", "policies from DPO,\nbest-of-n, RLOO / GRPO", "policy"),
    ("08", "Scaling up with TRL", "the same recipe\nin TRL, on a GPU", "frozen"),
]


def course_roadmap(ax=None, path: str | Path | None = None) -> Figure:
    """The course as a path: lessons 01-08, each box saying what that lesson produces.

    It teaches the order of the course and that each lesson's output is the next one's input:
    the base model, SFT, preferences, a reward model, PPO against it, how far the KL leash lets PPO
    go, the alternatives to PPO, and the same recipe at scale with TRL.
    """
    fig, ax = canvas(ax, 9.8, 4.6, "The course: each lesson and what it produces")
    w, h, xs = 2.2, 1.25, [1.25 + 2.43 * i for i in range(4)]
    rows = (3.15, 1.15)
    boxes = []
    for i, (number, title, product, kind) in enumerate(ROADMAP):
        x, y = (xs[i], rows[0]) if i < 4 else (xs[7 - i], rows[1])  # a snake: the second row runs back
        boxes.append(box(ax, x, y, w, h, kind=kind))
        note(ax, x, y + 0.36, f"{number}  {title}", size=FONT, weight="bold")
        note(ax, x, y - 0.16, product)
    for a, b in pairwise(boxes[:4]):
        arrow(ax, a.right, b.left)
    arrow(ax, boxes[3].bottom, boxes[4].top)
    for a, b in pairwise(boxes[4:]):
        arrow(ax, a.left, b.right)
    brace(ax, xs[1] - w / 2, xs[1] + w / 2, rows[0] + h / 2 + 0.12, "RLHF stage 1", below=False)
    brace(ax, xs[2] - w / 2, xs[3] + w / 2, rows[0] + h / 2 + 0.12, "RLHF stage 2", below=False)
    brace(ax, xs[2] - w / 2, xs[3] + w / 2, rows[1] - h / 2 - 0.12, "RLHF stage 3")
    return save(fig, path)


def rlhf_pipeline(ax=None, path: str | Path | None = None) -> Figure:
    """The three stages of RLHF and the artefacts that pass between them.

    Stage 1 fine-tunes the pretrained base model on demonstrations (SFT). Stage 2 has people compare
    the SFT policy's answers and fits a reward model to those comparisons. Stage 3 trains the policy
    with RL (PPO) to please the reward model, on a KL leash to the SFT model so that it cannot wander
    off into text the reward model never learned to judge.
    """
    fig, ax = canvas(ax, 9.6, 4.7, "The three stages of RLHF")
    model_w, model_h, top, bottom = 1.75, 0.72, 2.75, 0.85
    base = box(ax, 1.05, top, model_w, model_h, "pretrained\nbase model", "frozen")
    sft = box(ax, 4.25, top, model_w, model_h, "SFT policy", "policy", weight="bold")
    pairs = box(ax, 4.25, bottom, model_w, model_h, "preference\npairs", "data")
    reward = box(ax, 7.45, bottom, model_w, model_h, "reward model", "reward", weight="bold")
    aligned = box(ax, 8.45, top, model_w - 0.45, model_h, "aligned\npolicy", "policy", weight="bold")
    demos = box(ax, 2.6, 3.65, 1.75, 0.42, "demonstrations", "data", fontsize=SMALL)

    arrow(ax, base.right, sft.left, label="① SFT", label_at=(2.6, top - 0.25), weight="bold")
    arrow(ax, demos.bottom, (2.6, top + 0.04), colour=COLOURS["data"])
    arrow(ax, sft.bottom, pairs.top, label="② people compare\ntwo of its answers", label_at=(5.42, 1.8),
          weight="bold")
    arrow(ax, pairs.right, reward.left, label="fit Bradley-Terry", label_at=(5.85, bottom + 0.22))
    arrow(ax, sft.right, aligned.left, label="③ RL (PPO)", label_at=(6.0, top + 0.22), weight="bold")
    note(ax, 6.15, top - 0.25, "maximise score − β·KL")
    arrow(ax, reward.top, (7.45, top - 0.03), colour=COLOURS["reward"], label="scores\nanswers",
          label_at=(7.95, 1.85))
    arrow(ax, aligned.top, sft.top, colour=COLOURS["kl"], dashed=True, curve=0.35,
          label="KL leash: stay close to the SFT model", label_at=(6.35, 4.1))
    return save(fig, path)


# =====================================================================================
# Lesson 02: the SFT loss mask.
# =====================================================================================

SFT_EXAMPLE = (PAD, USER, "what", "is", "7", "plus", "5", "?", ASSISTANT, "12", ".", END)


def loss_mask(tokens: Sequence[str], prompt_length: int | None = None) -> list[int]:
    """SFT's loss mask of one padded dialogue: 1 on the answer's tokens and <|end|>, 0 on the prompt and pads.

    `prompt_length` counts the prompt's real tokens (up to and including <|assistant|>); by default
    it is found from the <|assistant|> token. Same rule as `sft.collate(..., response_only=True)`.
    """
    real = [i for i, token in enumerate(tokens) if token != PAD]
    if not real:
        raise ValueError("sft_loss_mask: `tokens` has no real (non-pad) token")
    if prompt_length is None:
        if ASSISTANT not in tokens:
            raise ValueError(f"sft_loss_mask: no {ASSISTANT} token in `tokens`; pass `prompt_length`")
        prompt_length = real.index(list(tokens).index(ASSISTANT)) + 1
    if not 0 < prompt_length < len(real):
        raise ValueError(f"sft_loss_mask: prompt_length={prompt_length} must leave at least one answer token "
                         f"among the {len(real)} real tokens")
    first_target = real[prompt_length]
    return [int(i >= first_target and token != PAD) for i, token in enumerate(tokens)]


def sft_loss_mask(tokens: Sequence[str] | None = None, prompt_length: int | None = None, ax=None,
                  path: str | Path | None = None) -> Figure:
    """The prompt-masked SFT loss on one dialogue: which tokens count, and which logits predict them.

    Every position's logits predict the *next* token (arrows: logits at t-1 -> token t), but the
    loss only counts the targets under a 1: the answer and <|end|> (so the model learns to stop),
    never the prompt (read, not learned) or the padding. The default dialogue is left-padded, as
    `sft.collate` pads a batch.
    """
    tokens = list(SFT_EXAMPLE if tokens is None else tokens)
    mask = loss_mask(tokens, prompt_length)
    width = max(strip_width(tokens) + 2.4, 9.4)
    x0 = (width - strip_width(tokens)) / 2 + 0.7  # centred, with room on the left for the row labels
    fig, ax = canvas(ax, width, 3.9, "SFT: the loss counts only the answer")
    kinds = ["off" if t == PAD else "policy" if m else "data" for t, m in zip(tokens, mask)]
    strip = token_strip(ax, tokens, x0, 2.05, kinds)
    token_strip(ax, [str(m) for m in mask], x0, 1.35, ["policy" if m else "off" for m in mask],
                widths=[b.w for b in strip])
    for t in range(1, len(tokens)):
        on = bool(mask[t])
        start = (strip[t - 1].x, 2.98)
        ax.add_patch(Rectangle((start[0] - 0.06, start[1] - 0.06), 0.12, 0.12, color=COLOURS["policy"] if on
                               else COLOURS["off"]))
        arrow(ax, start, strip[t].top, colour=COLOURS["policy"] if on else COLOURS["off"], width=1.8 if on else 1)
    note(ax, x0 - 0.12, 2.98, "logits at t − 1", ha="right")
    note(ax, x0 - 0.12, 2.05, "token t", ha="right")
    note(ax, x0 - 0.12, 1.35, "loss mask", ha="right")
    note(ax, strip[-1].right[0], 3.35, "the logits at t − 1 predict token t", colour=COLOURS["policy"], ha="right")
    runs = _runs(kinds)
    for kind, first, last in runs:
        label = {"off": "pad", "data": "prompt: read, not trained", "policy": "answer + end: trained"}[kind]
        brace(ax, strip[first].left[0], strip[last].right[0], 1.0, label, colour="#555555")
    note(ax, width / 2, 0.3, r"loss $= -\sum_t m_t \log p(x_t \mid x_{<t})\ /\ \sum_t m_t$,  $m_t$: the loss mask",
         size=FONT)
    return save(fig, path)


def _runs(labels: Sequence[str]) -> list[tuple[str, int, int]]:
    """Maximal runs of equal labels: `[(label, first, last), ...]`."""
    runs = []
    for i, label in enumerate(labels):
        if runs and runs[-1][0] == label and runs[-1][2] == i - 1:
            runs[-1] = (label, runs[-1][1], i)
        else:
            runs.append((label, i, i))
    return runs


# =====================================================================================
# Lessons 03 and 04: rankings, and the reward model's head.
# =====================================================================================


def ranking_to_pairs(k: int = 4, ax=None, path: str | Path | None = None) -> Figure:
    """A labeller ranks K answers to one prompt; the ranking becomes all C(K, 2) pairs, kept as one item.

    One ranking of 4 answers is 6 comparisons for the price of one labelling pass. The pairs share
    answers, so the reward model sees them in the same batch: shuffled apart, each answer would turn
    up in many batches of an epoch and the model over-fits to it (InstructGPT; `reward.item_batches`).
    """
    # The course's own function makes the pairs drawn here.
    from rlhf_lab.preferences import ranking_to_pairs as pairs_of

    if not isinstance(k, int) or not 2 <= k <= 8:
        raise ValueError(f"ranking_to_pairs: k must be an integer from 2 to 8, got {k!r}")
    letters = [chr(ord("A") + i) for i in range(k)]
    pairs = [(record.chosen, record.rejected) for record in pairs_of("prompt", letters)]
    chip_w, chip_h, step_x, step_y = 0.85, 0.42, 1.0, 0.56
    height = 1.95 + (k - 1) * step_y
    fig, ax = canvas(ax, 9.4, height, f"One ranking of K = {k} answers gives C({k}, 2) = {len(pairs)} pairs")
    top = height - 0.95
    ranking = box(ax, 1.75, top - (k - 2) * step_y / 2, 2.9, 1.0, kind="data")
    note(ax, ranking.x, ranking.y + 0.22, "one prompt, K answers,\nranked by a labeller")
    note(ax, ranking.x, ranking.y - 0.27, " > ".join(letters), size=14, weight="bold", family=MONO)
    grid_x0 = 9.4 - 0.5 - (k - 1) * step_x + step_x / 2
    for better, worse in pairs:
        row, column = letters.index(better), letters.index(worse) - 1
        box(ax, grid_x0 + column * step_x, top - row * step_y, chip_w, chip_h, f"{better} > {worse}", "data",
            family=MONO, fontsize=FONT)
    enclosure = Box(grid_x0 + (k - 2) * step_x / 2, top - (k - 2) * step_y / 2, (k - 1) * step_x + 0.25,
                    (k - 1) * step_y + 0.25)
    ax.add_patch(FancyBboxPatch((enclosure.x - enclosure.w / 2, enclosure.y - enclosure.h / 2), enclosure.w,
                                enclosure.h, boxstyle="round,pad=0,rounding_size=0.1", fill=False,
                                edgecolor=COLOURS["reward"], linewidth=1.6, linestyle=(0, (4, 2))))
    middle = (ranking.right[0] + enclosure.left[0]) / 2
    arrow(ax, ranking.right, enclosure.left, label="every pair\n(better, worse)", label_at=(middle, ranking.y + 0.3))
    note(ax, middle, ranking.y - 0.25, "C(K, 2) = K(K − 1) / 2")
    note(ax, enclosure.x, enclosure.y - enclosure.h / 2 - 0.25, "one labelling item: its pairs share a batch",
         colour=COLOURS["reward"])
    note(ax, 4.7, 0.28, "Shuffled apart, each answer would appear in many batches of an epoch: the reward model "
         "over-fits (InstructGPT).", colour="#555555")
    return save(fig, path)


REWARD_EXAMPLE = (PAD, PAD, USER, "what", "is", "7", "plus", "5", "?", ASSISTANT, "12", ".", END)


def reward_head(ax=None, path: str | Path | None = None) -> Figure:
    """The reward model: the whole text through the backbone, one number read at the last real token.

    The batch is left-padded, so every row's last column is its <|end|> token; under causal
    attention that position has seen the prompt and the whole answer, so a linear head there gives
    one score per answer. After training, `gain` and `bias` are set so that the SFT policy's own
    answers score mean 0 and std 1: a reward of +1 means one standard deviation better than SFT.
    """
    tokens = REWARD_EXAMPLE
    fig, ax = canvas(ax, 9.6, 5.0, "The reward model reads one number at the last real token")
    kinds = ["off" if t == PAD else "data" for t in tokens]
    strip = token_strip(ax, tokens, 0.25, 0.95, kinds)
    last, hidden_y = strip[-1], 2.92
    backbone = box(ax, (strip[0].left[0] + last.right[0]) / 2, 1.95, last.right[0] - strip[0].left[0], 0.55,
                   "transformer backbone (initialised from the SFT policy), causal attention", "reward", fill=0.9)
    for token, token_box in zip(tokens, strip):
        if token != PAD:  # pads are masked out of attention: nothing flows from them
            arrow(ax, token_box.top, (token_box.x, backbone.bottom[1]), colour=COLOURS["off"], width=1)
            arrow(ax, (token_box.x, backbone.top[1]), (token_box.x, hidden_y - 0.12), colour=COLOURS["off"], width=1)
            read = token_box is last
            ax.add_patch(Rectangle((token_box.x - 0.1, hidden_y - 0.1), 0.2, 0.2,
                                   color=COLOURS["reward" if read else "off"]))
    head = box(ax, 8.65, hidden_y, 1.55, 0.7, "scalar head\nw · h + b", "reward")
    normalise = box(ax, 8.65, 4.0, 1.55, 0.7, "× gain + bias", "reward")
    score = box(ax, 6.2, 4.0, 1.3, 0.6, "score", "reward", weight="bold", fontsize=FONT + 1)
    arrow(ax, (last.x + 0.1, hidden_y), head.left, colour=COLOURS["reward"])
    arrow(ax, head.top, normalise.bottom, colour=COLOURS["reward"])
    arrow(ax, normalise.left, score.right, colour=COLOURS["reward"])
    note(ax, 4.7, 3.45, "h at the last real token, <|end|>:\nit has attended to prompt and answer",
         colour=COLOURS["reward"], ha="right")
    arrow(ax, (4.75, 3.4), (last.x - 0.12, hidden_y + 0.08), colour=COLOURS["reward"], width=1)
    note(ax, 5.4, 4.0, "gain and bias are set so the SFT\npolicy's answers score mean 0, std 1", ha="right")
    groups = [("left padding", 0, 1), ("prompt", 2, 9), ("answer", 10, 12)]
    for label, first, end in groups:
        brace(ax, strip[first].left[0], strip[end].right[0], 0.6, label, colour="#555555")
    return save(fig, path)


# =====================================================================================
# Lessons 05 and 06: PPO's models, the per-token reward, the reward-KL frontier.
# =====================================================================================


def ppo_four_models(ax=None, path: str | Path | None = None) -> Figure:
    """PPO's four models and what flows between them in one iteration.

    The policy (trained) answers a batch of prompts. The frozen reward model scores each answer;
    the frozen reference (the SFT model) gives the log-probs for the per-token KL penalty; the
    critic (trained) gives a value per token. Rewards and values make GAE's advantages, which drive
    the clipped policy update; the returns train the critic. Two models learn, two never change.
    """
    fig, ax = canvas(ax, 9.8, 5.3, "PPO's four models: two learn, two stay frozen")
    model_w, model_h, models_x, out_x = 1.9, 0.8, 5.75, 8.8
    prompts = box(ax, 1.2, 4.3, 1.5, 0.5, "prompts", "data")
    policy = box(ax, 1.2, 2.9, model_w, model_h, "policy $\\pi_\\theta$\ntrained", "policy", weight="bold")
    answers = box(ax, 3.4, 2.9, 1.5, model_h, "answers $y$,\n$\\log\\pi_\\theta(y_t)$", "data")
    reward = box(ax, models_x, 4.3, model_w, model_h, "reward model\nfrozen", "reward", dashed=True, weight="bold")
    reference = box(ax, models_x, 2.9, model_w, model_h, "reference $\\pi_\\mathrm{SFT}$\nfrozen", "frozen",
                    dashed=True, weight="bold")
    critic = box(ax, models_x, 1.5, model_w, model_h, "critic $V$\ntrained", "critic", weight="bold")
    rewards = box(ax, out_x, 3.6, 1.8, 1.0, "per-token reward\n$r_t = -\\beta\\,\\mathrm{KL}_t$\n(+ score on the last)",
                  "kl", fontsize=SMALL)
    gae = box(ax, out_x, 1.5, 1.8, model_h, "GAE:\nadvantages $\\hat A_t$", "data", fontsize=SMALL)
    update = box(ax, 3.85, 0.45, 3.4, 0.55, "clipped surrogate update of $\\pi_\\theta$", "policy", fontsize=SMALL)

    arrow(ax, prompts.bottom, policy.top, label="sample", label_at=(1.67, 3.65))
    arrow(ax, policy.right, answers.left)
    for model in (reward, reference, critic):
        arrow(ax, answers.right, model.left)
    arrow(ax, reward.right, (out_x - 0.3, rewards.top[1]), colour=COLOURS["reward"], label="score",
          label_at=(7.55, 4.47))
    arrow(ax, reference.right, (rewards.left[0], 3.25), colour=COLOURS["kl"], label="$\\log\\pi_\\mathrm{SFT}(y_t)$",
          label_at=(7.45, 2.72))
    arrow(ax, (critic.right[0], 1.62), (gae.left[0], 1.62), colour=COLOURS["critic"], label="values $V_t$",
          label_at=(7.3, 1.85))
    arrow(ax, (gae.left[0], 1.38), (critic.right[0], 1.38), colour=COLOURS["critic"], label="returns",
          label_at=(7.3, 1.15))
    arrow(ax, rewards.bottom, gae.top, label="$r_t$", label_at=(8.98, 2.5))
    arrow(ax, gae.bottom, update.right, curve=-0.25, label="$\\hat A_t$", label_at=(7.3, 0.5))
    arrow(ax, update.left, policy.bottom, curve=-0.3, colour=COLOURS["policy"], label="new $\\theta$",
          label_at=(0.95, 1.35))
    note(ax, 0.25, 0.45, "dashed: frozen", colour="#555555", ha="left")
    return save(fig, path)


PER_TOKEN_EXAMPLE = {  # an illustration, not a measurement: numbers chosen to make every bar visible
    "tokens": ("7", "plus", "5", "is", "12", ".", END, PAD, PAD),
    "kl": (0.5, 0.2, 0.3, 0.9, 1.6, 0.4, 0.7, 0.0, 0.0),
    "score": 1.2,
    "beta": 0.2,
}


def per_token_rewards(kl: Sequence[float], score: float, beta: float, mask: Sequence[int]) -> np.ndarray:
    """r_t = -β·KL_t on every real token, + score on the last real one, 0 on pads: `kl.kl_penalised_rewards`."""
    import torch

    from rlhf_lab.kl import kl_penalised_rewards

    kl_row = torch.tensor([[float(value) for value in kl]], dtype=torch.float64)
    rewards, _ = kl_penalised_rewards(torch.tensor([float(score)], dtype=torch.float64), kl_row,
                                      torch.zeros_like(kl_row), torch.tensor([[int(m) for m in mask]]), beta)
    return rewards[0].numpy()


def axes_figure(ax, width: float, height: float):
    """`(figure, axes)` for a chart: a new constrained-layout figure, or the given axes' figure."""
    with matplotlib.rc_context(STYLE):
        if ax is None:
            fig = Diagram(figsize=(width, height), layout="constrained")
            ax = fig.add_subplot()
    return ax.figure, ax


def _per_token_inputs(tokens, kl, score, beta) -> tuple[list[str], np.ndarray, float, float, bool]:
    """Checked `(tokens, kl, score, beta, illustration)`: the example's numbers when none are given."""
    given = {"tokens": tokens, "kl": kl, "score": score, "beta": beta}
    illustration = all(value is None for value in given.values())
    if illustration:
        tokens, kl, score, beta = (PER_TOKEN_EXAMPLE[key] for key in given)
    elif any(value is None for value in given.values()):
        missing = ", ".join(name for name, value in given.items() if value is None)
        raise ValueError(f"per_token_reward: pass all of tokens, kl, score and beta (missing: {missing})")
    tokens, kl = list(tokens), np.asarray(kl, dtype=float).reshape(-1)
    if len(kl) != len(tokens):
        raise ValueError(f"per_token_reward: `kl` has {len(kl)} values but `tokens` has {len(tokens)}")
    if all(token == PAD for token in tokens):
        raise ValueError("per_token_reward: `tokens` has no real (non-pad) token")
    if not (np.isfinite(kl).all() and math.isfinite(score) and math.isfinite(beta)):
        raise ValueError(f"per_token_reward: kl, score and beta must be finite (score={score}, beta={beta})")
    return tokens, kl, float(score), float(beta), illustration


def _reward_bars(ax, mask: np.ndarray, penalties: np.ndarray, rewards: np.ndarray, score: float) -> None:
    """Red -β·KL_t bars, the blue score bar on the last real token, each token's r_t, and the pads."""
    positions, last = np.arange(len(mask)), int(np.flatnonzero(mask)[-1])
    # The last token's score bar starts at 0 and its KL penalty is drawn from the score's top, so the
    # bar's end is r_t there too and all bar heights still add up to Σ r_t.
    bottoms = np.where(positions == last, score, 0.0)
    ax.bar([last], [score], 0.6, color=COLOURS["reward"], label="reward model's score, on the last real token")
    ax.bar(positions, penalties, 0.6, bottom=bottoms, color=COLOURS["kl"],
           label=r"$-\beta\,\mathrm{KL}_t$ on every token")
    labelled = np.flatnonzero(mask) if len(mask) <= 14 else [last]  # more would crowd: label the last only
    for i in labelled:
        up = rewards[i] >= 0
        ends = (rewards[i], bottoms[i], 0.0)  # label beyond the bar's far end, whichever way it points
        ax.annotate(f"{rewards[i]:+.2f}", (i, max(ends) if up else min(ends)), xytext=(0, 4 if up else -4),
                    textcoords="offset points", ha="center", va="bottom" if up else "top", fontsize=SMALL,
                    color=TEXT)
    pads = np.flatnonzero(mask == 0)
    for i in pads:
        ax.axvspan(i - 0.4, i + 0.4, color=tint(COLOURS["off"], 0.7), linewidth=0)
    if len(pads):
        note(ax, pads.mean(), 0.4, "pads:\nno reward", colour="#555555", transform=ax.get_xaxis_transform())


def per_token_reward(tokens: Sequence[str] | None = None, kl: Sequence[float] | None = None,
                     score: float | None = None, beta: float | None = None, ax=None,
                     path: str | Path | None = None) -> Figure:
    """The per-token reward of one answer: -β·KL_t on every token, the reward model's score on the last.

    PPO's reward is not one number per answer but one per token: each token pays for how far it
    moved from the reference (KL_t = log π(y_t) - log π_SFT(y_t)), and the answer's score arrives
    at its last real token (<|end|>); pads get nothing. Summed, Σ r_t = score - β Σ KL_t: the
    objective "reward minus β times KL". The bars are computed by `kl.kl_penalised_rewards`.

    With no arguments it draws an illustration with made-up numbers; pass a real answer's
    `tokens` (pads included), per-token `kl` (same length), its `score` and `beta` to draw a rollout.
    """
    tokens, kl, score, beta, illustration = _per_token_inputs(tokens, kl, score, beta)
    mask = np.array([int(token != PAD) for token in tokens])
    rewards = per_token_rewards(kl, score, beta, mask)
    penalties = np.where(mask == 1, -beta * kl, 0.0)
    fig, ax = axes_figure(ax, 9.4, 4.3)
    with matplotlib.rc_context(STYLE):
        _reward_bars(ax, mask, penalties, rewards, score)
        ax.axhline(0, color=TEXT, linewidth=0.8)
        fits = max(map(len, tokens)) * 0.6 * SMALL < 0.9 * 600 / len(tokens)  # label width vs slot, points
        ax.set_xticks(np.arange(len(tokens)), tokens, family=MONO, rotation=0 if fits else 90)
        ax.set(ylabel="per-token reward $r_t$", xlim=(-0.6, len(tokens) - 0.4))
        low, high = min(rewards.min(), penalties.min(), 0), max(score, rewards.max(), 0)
        span = max(high - low, 0.1)
        ax.set_ylim(low - 0.15 * span, high + 0.55 * span)  # the top third stays free for the sum and the legend
        ax.set_title("The per-token reward: a KL penalty on every token, the score on the last"
                     + ("\n(an illustration: made-up numbers)" if illustration else ""))
        identity = (r"$\Sigma_t\, r_t = \mathrm{score} - \beta\, \Sigma_t\, \mathrm{KL}_t$" + "\n"
                    f"= {score:.2f} − {beta:g} × {float(mask @ kl):.2f} = {rewards.sum():.2f}")
        ax.text(0.02, 0.95, identity, transform=ax.transAxes, ha="left", va="top", fontsize=FONT, color=TEXT,
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": COLOURS["off"]})
        ax.legend(loc="upper right", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return save(fig, path)


# Where the schematic frontier's named policies sit: KL (arbitrary units) and label.
KL_LABEL = r"KL($\pi\ \|\ \pi_\mathrm{SFT}$)"
SCHEMATIC_KL_MAX = 24.0
FRONTIER_POINTS = ((0.0, "SFT"), (0.6, "large β"), (4.0, "small β"), (19.0, "no leash (β = 0)"))


def schematic_frontier(kl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(proxy, true)` gain over SFT of the schematic: proxy ∝ d, true = d - 0.22 d², with d = √KL.

    Only the shape is meant (after Gao et al. 2022): the proxy keeps rising with the distance from
    SFT, the true score rises, peaks and falls. The numbers are made up.
    """
    d = np.sqrt(kl)
    return d, d - 0.22 * d**2


def _draw_schematic(ax, scale_x: float, scale_y: float, faint: bool) -> None:
    """The schematic proxy and true curves (KL stretched by scale_x, scores by scale_y), labelled 'schematic'.

    Drawn bold with the named policies of FRONTIER_POINTS, or faint behind measured points.
    """
    kl = np.linspace(0, SCHEMATIC_KL_MAX, 300)
    proxy, true = schematic_frontier(kl)
    style = {"linewidth": 2, "alpha": 0.45 if faint else 1.0, "linestyle": "--" if faint else "-"}
    ax.plot(kl * scale_x, proxy * scale_y, color=COLOURS["reward"], label="reward model (proxy), schematic", **style)
    ax.plot(kl * scale_x, true * scale_y, color=COLOURS["true"], label="true score, schematic", **style)
    if faint:
        return
    for point_kl, name in FRONTIER_POINTS:
        (proxy_at,), (true_at,) = schematic_frontier(np.array([point_kl]))
        ax.plot([point_kl] * 2, [true_at, proxy_at], color="#999999", linewidth=1, linestyle=":")
        ax.plot([point_kl] * 2, [proxy_at, true_at], "o", color=TEXT, markersize=6, zorder=3)
        ax.annotate(name, (point_kl, proxy_at), xytext=(6, 8) if point_kl else (8, -14), textcoords="offset points",
                    ha="left" if point_kl < 15 else "center", fontsize=SMALL, color=TEXT)


def _shade_past_peak(ax, peak_kl: float, end_kl: float, text: str) -> None:
    """Shade the KL range past the true score's peak, where the policy learns the reward model's mistakes."""
    ax.axvspan(peak_kl, end_kl, color=tint(COLOURS["kl"], 0.9), linewidth=0)
    note(ax, (peak_kl + end_kl) / 2, 0.45, text, colour=COLOURS["kl"], transform=ax.get_xaxis_transform())


def _draw_measured(ax, measured: Mapping[str, object], label: str) -> tuple[float, float, float]:
    """Measured points as gains over each frame's smallest-KL row (SFT).

    Returns the largest KL, the largest proxy gain, and the KL where the true gain peaks.
    """
    markers, kl_max, gain_max, best = "os^Dv", 0.0, 0.0, (-math.inf, 0.0)
    for i, (name, frame) in enumerate(measured.items()):
        missing = {"kl", "reward", "true_score"} - set(frame.columns)
        if missing:
            raise ValueError(f"reward_kl_frontier: measured frame {name!r} lacks column(s) {sorted(missing)}")
        frame = frame.sort_values("kl")
        gains = {column: frame[column] - frame[column].iloc[0] for column in ("reward", "true_score")}
        for column, colour, kind in (("reward", "reward", "reward model (proxy)"),
                                     ("true_score", "true", "true score")):
            ax.plot(frame["kl"], gains[column], marker=markers[i % len(markers)], color=COLOURS[colour], linewidth=1,
                    label=f"{kind}, {name}")
        if label in frame:
            for j, (text, kl, gain) in enumerate(zip(frame[label], frame["kl"], gains["reward"])):
                ax.annotate(str(text), (kl, gain), xytext=(6, -13) if j == 0 else (4, 5), textcoords="offset points",
                            fontsize=SMALL, color=TEXT)
        peak = int(np.argmax(gains["true_score"].to_numpy()))
        best = max(best, (float(gains["true_score"].iloc[peak]), float(frame["kl"].iloc[peak])))
        kl_max, gain_max = max(kl_max, float(frame["kl"].max())), max(gain_max, float(gains["reward"].max()))
    return kl_max, gain_max, best[1]


def reward_kl_frontier(measured=None, label: str = "setting", ax=None, path: str | Path | None = None) -> Figure:
    """The reward-vs-KL frontier: the proxy keeps rising with KL, the true score rises, peaks and falls.

    A schematic (after Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"): a strong
    leash (large β) stays near SFT and gains little; a weaker one buys more true score; with no
    leash the policy travels far, the reward model keeps applauding, and the true score falls past
    its peak: the policy is learning the reward model's mistakes.

    `measured`: a frame with `kl`, `reward`, `true_score` columns (like lesson 06's frontier table,
    SFT row included), or a `{name: frame}` mapping, drawn as gains over each frame's smallest-KL
    row and labelled by the `label` column; the schematic is then drawn faintly, rescaled to them.
    """
    fig, ax = axes_figure(ax, 9.4, 4.6)
    with matplotlib.rc_context(STYLE):
        if measured is None:
            _draw_schematic(ax, 1.0, 1.0, faint=False)
            kl = np.linspace(0, SCHEMATIC_KL_MAX, 300)
            _shade_past_peak(ax, kl[np.argmax(schematic_frontier(kl)[1])], SCHEMATIC_KL_MAX,
                             "past the true score's peak:\nover-optimisation")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set(xlabel=KL_LABEL + " →", ylabel="score gain over SFT →", xlim=(-0.5, SCHEMATIC_KL_MAX + 0.5))
            ax.set_title("The reward–KL frontier (schematic): the proxy keeps rising, the truth peaks")
        else:
            frames = measured if isinstance(measured, Mapping) else {"measured": measured}
            kl_max, gain_max, peak_kl = _draw_measured(ax, frames, label)
            # Stretch the schematic so its "no leash" point lands on the farthest measured proxy point.
            no_leash_kl = FRONTIER_POINTS[-1][0]
            _draw_schematic(ax, kl_max / no_leash_kl, gain_max / math.sqrt(no_leash_kl), faint=True)
            if peak_kl < kl_max:
                _shade_past_peak(ax, peak_kl, kl_max, "past the measured\ntrue score's peak")
            ax.set(xlabel=KL_LABEL + ", nats per answer", ylabel="gain over SFT (each score in its units)")
            ax.set_title("The reward–KL frontier: measured, over the schematic's shape")
        ax.axhline(0, color="#999999", linewidth=0.8)
        ax.legend(loc="upper left", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    return save(fig, path)


# =====================================================================================
# All figures, written by `python -m rlhf_lab.diagrams`.
# =====================================================================================

FIGURES: dict[str, Callable[..., Figure]] = {
    "course_roadmap": course_roadmap,
    "rlhf_pipeline": rlhf_pipeline,
    "sft_loss_mask": sft_loss_mask,
    "ranking_to_pairs": ranking_to_pairs,
    "reward_head": reward_head,
    "ppo_four_models": ppo_four_models,
    "per_token_reward": per_token_reward,
    "reward_kl_frontier": reward_kl_frontier,
}


def write_all(out_dir: str | Path = FIGURES_DIR, formats: Sequence[str] = ("svg",)) -> list[Path]:
    """Draw every figure of FIGURES with its defaults and save it as `out_dir/<name>.<format>`."""
    paths = []
    for name, draw in FIGURES.items():
        fig = draw()
        for suffix in formats:
            paths.append(Path(out_dir) / f"{name}.{suffix}")
            save(fig, paths[-1])
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.diagrams", description=(
        "Draw the course's diagrams into notebooks/figures/ (SVG; byte-for-byte repeatable)."))
    parser.add_argument("--out", default=str(FIGURES_DIR), help="folder to write to (default: %(default)s)")
    parser.add_argument("--png", action="store_true", help="also write PNGs (100 dpi), e.g. to look at them")
    args = parser.parse_args(argv)
    paths = write_all(args.out, ("svg", "png") if args.png else ("svg",))
    for path in paths:
        print(f"{path}  ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
