"""The course's diagrams: each draws, is legible, shows what the code computes, and the committed SVGs are current."""

import itertools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle
from matplotlib.text import Text

from rlhf_lab import diagrams
from rlhf_lab.reward import last_real_index
from rlhf_lab.sft import collate, encode_dialogues
from rlhf_lab.tokenizer import END, PAD, build_tokenizer

SVG_LIMIT_BYTES = 150 * 1024


def drawn_texts(fig: Figure):
    """`(text, window extent)` of every non-empty text the renderer draws (tick labels outside the view are not)."""
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    hidden = set()
    for ax in fig.axes:
        for axis, (low, high) in ((ax.xaxis, sorted(ax.get_xlim())), (ax.yaxis, sorted(ax.get_ylim()))):
            for tick in axis.get_major_ticks():
                if not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    hidden.update({id(tick.label1), id(tick.label2)})
    return [(text, text.get_window_extent(renderer)) for text in fig.findobj(Text)
            if text.get_visible() and text.get_text().strip() and id(text) not in hidden]


def text_of(fig: Figure, predicate) -> list[Text]:
    return [text for text, _ in drawn_texts(fig) if predicate(text.get_text())]


@pytest.fixture(scope="module", params=list(diagrams.FIGURES))
def drawn(request):
    return request.param, diagrams.FIGURES[request.param]()


# ----- every figure: draws, and is legible at a notebook's width ------------------------------


def test_every_figure_is_legible(drawn):
    name, fig = drawn
    assert isinstance(fig, Figure)
    width, height = fig.get_size_inches()
    # 8-10 inches wide: shown ~900 px wide on GitHub and Colab, 10 pt text stays ~12-13 px.
    assert 8 <= width <= 10 and 3 <= height <= 6, (name, width, height)
    texts = drawn_texts(fig)
    assert texts, name
    page = fig.bbox
    for text, extent in texts:
        assert text.get_fontsize() >= 10, (name, text.get_text(), text.get_fontsize())
        assert page.x0 - 0.5 <= extent.x0 and extent.x1 <= page.x1 + 0.5, (name, text.get_text(), "off the page")
        assert page.y0 - 0.5 <= extent.y0 and extent.y1 <= page.y1 + 0.5, (name, text.get_text(), "off the page")
    for (a, a_box), (b, b_box) in itertools.combinations(texts, 2):
        assert not a_box.overlaps(b_box), (name, a.get_text(), b.get_text())


def test_text_inside_a_box_fits_in_it(drawn):
    name, fig = drawn
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [patch.get_window_extent(renderer) for patch in fig.findobj(FancyBboxPatch) if patch.get_visible()]
    for text, extent in texts:
        x, y = (extent.x0 + extent.x1) / 2, (extent.y0 + extent.y1) / 2
        for box in boxes:
            if box.contains(x, y) and box.width > 5:
                assert (box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1 and box.y0 - 1 <= extent.y0
                        and extent.y1 <= box.y1 + 1), (name, text.get_text(), "spills out of its box")


@pytest.mark.parametrize("name", list(diagrams.FIGURES))
def test_draws_into_given_axes(name):
    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    assert diagrams.FIGURES[name](ax=ax) is fig
    assert any(artist.get_visible() for artist in ax.get_children())


def test_a_diagram_shows_itself_in_a_notebook():
    # Made without pyplot, a figure is shown by IPython through _repr_png_ (once, with or without
    # `%matplotlib inline`): the PNG of the whole figure at 100 dpi.
    fig = diagrams.rlhf_pipeline()
    png = fig._repr_png_()
    assert png.startswith(b"\x89PNG")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == tuple(round(100 * size) for size in fig.get_size_inches())


def test_importing_draws_nothing_and_needs_no_display():
    # No pyplot (so no backend, no window, no figure kept open) and no display needed.
    code = "import sys, rlhf_lab.diagrams; print('matplotlib.pyplot' in sys.modules)"
    env = {key: value for key, value in os.environ.items() if key not in ("DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = str(Path(diagrams.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stdout + result.stderr


# ----- each figure shows what the code computes ------------------------------------------------


def test_sft_mask_row_is_what_collate_computes():
    fig = diagrams.sft_loss_mask()
    cells = sorted(text_of(fig, lambda s: s in {"0", "1"}), key=lambda t: t.get_position()[0])
    mask_row = [int(cell.get_text()) for cell in cells]
    # Left padding, then the prompt: 0; the answer "12." and <|end|>: 1.
    assert mask_row == [0] + [0] * 8 + [1, 1, 1]
    # The strip and the mask are exactly what sft.collate builds for this dialogue in a left-padded batch.
    tokenizer = build_tokenizer(["what", "is", "plus"])
    rows = [{"prompt": "what is 7 plus 5?", "completion": "12."},
            {"prompt": "what is 7 plus 5?", "completion": "is 12."}]  # one token longer: row 0 gets one pad
    input_ids, _, loss_mask = collate(encode_dialogues(tokenizer, rows), tokenizer.pad_token_id, response_only=True)
    assert tuple(tokenizer.convert_ids_to_tokens(input_ids[0].tolist())) == diagrams.SFT_EXAMPLE
    assert loss_mask[0].int().tolist() == mask_row
    strip = [text.get_text() for text in text_of(fig, lambda s: s in diagrams.SFT_EXAMPLE)]
    assert strip == list(diagrams.SFT_EXAMPLE)


def test_sft_mask_of_other_dialogues():
    right_padded = ["<|user|>", "hi", "<|assistant|>", "hello", "<|end|>", PAD, PAD]
    assert diagrams.loss_mask(right_padded) == [0, 0, 0, 1, 1, 0, 0]
    assert diagrams.loss_mask(right_padded, prompt_length=2) == [0, 0, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="no <\\|assistant\\|> token"):
        diagrams.sft_loss_mask(["hello", END])
    with pytest.raises(ValueError, match="prompt_length=5"):
        diagrams.loss_mask(right_padded, prompt_length=5)


def bar_heights(fig: Figure) -> np.ndarray:
    ax = fig.axes[0]
    return np.array([patch.get_height() for container in ax.containers for patch in container])


def test_per_token_bars_sum_to_score_minus_beta_kl():
    example = diagrams.PER_TOKEN_EXAMPLE
    fig = diagrams.per_token_reward()
    real = np.array([token != PAD for token in example["tokens"]])
    expected = example["score"] - example["beta"] * np.asarray(example["kl"])[real].sum()
    assert bar_heights(fig).sum() == pytest.approx(expected, abs=1e-9)
    assert text_of(fig, lambda s: f"= {expected:.2f}" in s), "the sum identity is written on the figure"
    assert text_of(fig, lambda s: "illustration" in s), "made-up numbers are labelled as such"


def test_per_token_reward_from_real_numbers():
    # A k1 estimate can be negative; pads carry junk that must be ignored; no "illustration" label.
    tokens, kl, score, beta = ["hello", "!", END, PAD, PAD], [-0.3, 0.2, 0.4, 7.0, -3.0], -0.8, 0.5
    fig = diagrams.per_token_reward(tokens, torch.tensor(kl), score, beta)
    # The KL arrives as float32 (as from a rollout): each value is off by up to ~3e-8, so 1e-6 is ample.
    assert bar_heights(fig).sum() == pytest.approx(score - beta * (-0.3 + 0.2 + 0.4), abs=1e-6)
    assert not text_of(fig, lambda s: "illustration" in s)
    rewards = diagrams.per_token_rewards(kl, score, beta, [1, 1, 1, 0, 0])
    np.testing.assert_allclose(rewards, [0.15, -0.1, -0.8 - 0.2, 0.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": ["a", END]}, "missing: kl, score, beta"),
    ({"tokens": ["a", END], "kl": [0.1], "score": 1.0, "beta": 0.1}, "`kl` has 1 values but `tokens` has 2"),
    ({"tokens": [PAD], "kl": [0.1], "score": 1.0, "beta": 0.1}, "no real"),
    ({"tokens": ["a", END], "kl": [0.1, math.nan], "score": 1.0, "beta": 0.1}, "must be finite"),
])
def test_per_token_reward_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        diagrams.per_token_reward(**kwargs)


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_ranking_becomes_all_pairs(k):
    fig = diagrams.ranking_to_pairs(k)
    chips = {text.get_text() for text in text_of(fig, lambda s: re.fullmatch(r"[A-H] > [A-H]", s) is not None)}
    letters = "ABCDEFGH"[:k]
    assert chips == {f"{a} > {b}" for a, b in itertools.combinations(letters, 2)}
    assert len(chips) == math.comb(k, 2)
    assert text_of(fig, lambda s: f"C({k}, 2) = {math.comb(k, 2)} pairs" in s)


def test_ranking_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be an integer from 2 to 8"):
        diagrams.ranking_to_pairs(1)


def test_reward_head_reads_the_last_real_token():
    fig = diagrams.reward_head()
    tokens = diagrams.REWARD_EXAMPLE
    attention_mask = torch.tensor([[int(token != PAD) for token in tokens]])
    assert tokens[0] == PAD and tokens[-1] == END and last_real_index(attention_mask).item() == len(tokens) - 1
    reward_blue = to_rgb(diagrams.COLOURS["reward"])
    squares = [patch for patch in fig.axes[0].patches if isinstance(patch, Rectangle)
               and not isinstance(patch, FancyBboxPatch)]
    read = [patch for patch in squares if to_rgb(patch.get_facecolor()[:3]) == reward_blue]
    assert len(read) == 1, "exactly one hidden state is read"
    end_token = text_of(fig, lambda s: s == END)[0]
    assert read[0].get_x() + read[0].get_width() / 2 == pytest.approx(end_token.get_position()[0])
    assert len(squares) == sum(token != PAD for token in tokens), "a hidden state per real token, none for pads"


def test_ppo_four_models_frozen_and_trained():
    fig = diagrams.ppo_four_models()
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = fig.findobj(FancyBboxPatch)
    states = {}
    for text, extent in texts:
        if "\n" in text.get_text() and text.get_text().endswith(("frozen", "trained")):  # a model's box
            centre = ((extent.x0 + extent.x1) / 2, (extent.y0 + extent.y1) / 2)
            (patch,) = [p for p in boxes if p.get_window_extent(renderer).contains(*centre)]
            dashed = patch.get_linestyle() not in ("-", "solid")
            states[text.get_text().split("\n")[0]] = (text.get_text().split("\n")[1], dashed)
    assert states == {"policy $\\pi_\\theta$": ("trained", False), "critic $V$": ("trained", False),
                      "reward model": ("frozen", True), "reference $\\pi_\\mathrm{SFT}$": ("frozen", True)}


def test_schematic_frontier_shape_and_labels():
    kl = np.linspace(0, diagrams.SCHEMATIC_KL_MAX, 500)
    proxy, true = diagrams.schematic_frontier(kl)
    assert np.all(np.diff(proxy) > 0), "the proxy keeps rising"
    peak = int(np.argmax(true))
    assert 0 < peak < len(kl) - 1 and true[-1] < true[peak] and true[-1] < 0, "the truth peaks, then falls below SFT"
    fig = diagrams.reward_kl_frontier()
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels and all("schematic" in label for label in labels)
    for name in ("SFT", "large β", "small β", "no leash"):
        assert text_of(fig, lambda s, name=name: s.startswith(name)), name


def test_frontier_overlays_measured_points_as_gains_over_sft():
    frontier = pd.DataFrame({"setting": ["SFT", "β=1", "β=0.1", "β=0"], "kl": [0.0, 0.1, 1.2, 6.0],
                             "reward": [0.1, 0.3, 1.0, 2.1], "true_score": [2.6, 2.65, 2.72, 2.3]})
    fig = diagrams.reward_kl_frontier(frontier.iloc[::-1])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    np.testing.assert_allclose(lines["reward model (proxy), measured"].get_ydata(), [0.0, 0.2, 0.9, 2.0])
    np.testing.assert_allclose(lines["true score, measured"].get_ydata(), [0.0, 0.05, 0.12, -0.3], atol=1e-12)
    assert {"reward model (proxy), schematic", "true score, schematic"} <= set(lines)
    assert text_of(fig, lambda s: s == "β=0.1") and text_of(fig, lambda s: "measured" in s)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['true_score'\]"):
        diagrams.reward_kl_frontier(frontier.drop(columns="true_score"))


# ----- the committed figures are what the code draws now ----------------------------------------

TEXT_IN_SVG = re.compile(r"<!-- (.*?) -->", re.DOTALL)  # matplotlib writes every text as a comment
SIZE_IN_SVG = re.compile(r'<svg [^>]*width="([\d.]+)pt" height="([\d.]+)pt"')
CREATOR_IN_SVG = re.compile(r"<dc:title>Matplotlib v([^,]+),")


def test_committed_figures_are_current(tmp_path, capsys):
    diagrams.main(["--out", str(tmp_path)])
    assert "per_token_reward.svg" in capsys.readouterr().out
    fresh = sorted(path.name for path in tmp_path.iterdir())
    committed = sorted(path.name for path in diagrams.FIGURES_DIR.glob("*.svg"))
    assert fresh == committed == sorted(f"{name}.svg" for name in diagrams.FIGURES), "run python -m rlhf_lab.diagrams"
    for name in committed:
        old, new = (diagrams.FIGURES_DIR / name).read_text(), (tmp_path / name).read_text()
        assert len(old.encode()) < SVG_LIMIT_BYTES, name
        made_with = CREATOR_IN_SVG.search(old).group(1)
        if made_with == matplotlib.__version__:
            # Same matplotlib: the output is byte-for-byte repeatable (fixed hash salt, no date, the
            # fonts matplotlib ships drawn as paths), so any difference is a changed drawing.
            assert old == new, f"{name} is stale: run python -m rlhf_lab.diagrams"
        else:
            # Another matplotlib version writes the same drawing with different path data and
            # number formatting, so compare what it says and how big it is instead.
            assert TEXT_IN_SVG.findall(old), f"{name}: no text found in the SVG"
            assert TEXT_IN_SVG.findall(old) == TEXT_IN_SVG.findall(new), f"{name}'s text changed"
            assert SIZE_IN_SVG.search(old).groups() == SIZE_IN_SVG.search(new).groups(), f"{name}'s size changed"
