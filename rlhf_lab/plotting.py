"""The plots the lessons draw. Each returns its matplotlib figure (and can save it as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

RATE_LABELS = {
    "flawed_rate": "flawed answers",
    "refusal_rate_harmful": "refuses harmful requests",
    "over_refusal_rate": "refuses benign-but-edgy",
    "arithmetic_accuracy": "arithmetic right",
    "fact_accuracy": "facts right",
    "rudeness_rate": "rude",
    "well_formed_rate": "well-formed",
}


def _finish(fig, path: str | Path | None):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def loss_curve(history: pd.DataFrame, title: str = "training loss", column: str = "loss",
               path: str | Path | None = None, ax=None):
    """A loss history (a `step` column and a loss column), with a moving average."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.5))
    ax.plot(history["step"], history[column], alpha=0.35, label=column)
    window = max(1, len(history) // 15)
    ax.plot(history["step"], history[column].rolling(window, min_periods=1).mean(), label=f"moving average ({window})")
    ax.set(xlabel="step", ylabel=column, title=title)
    ax.legend()
    return _finish(fig, path)


def behaviour_bars(metrics: dict[str, dict[str, float]], title: str = "behaviour by the simulated human",
                   path: str | Path | None = None):
    """Side-by-side bars of the behaviour rates of several policies: `{"base": metrics, "sft": metrics}`."""
    names = list(metrics)
    keys = [k for k in RATE_LABELS if all(k in m for m in metrics.values())]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar([x + i * width for x in range(len(keys))], [metrics[name][k] for k in keys], width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([RATE_LABELS[k] for k in keys], rotation=25, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="share of answers", title=title)
    ax.legend()
    return _finish(fig, path)


def family_scores(frames: dict[str, pd.DataFrame], title: str = "mean score by prompt family",
                  path: str | Path | None = None):
    """Mean simulated-human score per prompt family for several policies' judged answers."""
    table = pd.DataFrame({name: frame.groupby("family")["total"].mean() for name, frame in frames.items()})
    fig, ax = plt.subplots(figsize=(8, 3.8))
    table.plot.bar(ax=ax, rot=25)
    ax.axhline(3.0, color="grey", lw=0.8, ls="--")
    ax.set(ylabel="mean score (ideal = 3)", title=title, xlabel="")
    return _finish(fig, path)


def ppo_curves(history: pd.DataFrame, path: str | Path | None = None, axes=None):
    """Reward-model score, the simulated human's score and KL per PPO iteration (three panels)."""
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    else:
        fig = axes[0].figure
    x = history["iteration"]
    axes[0].plot(x, history["reward"], color="tab:blue")
    axes[0].set(title="reward model score (the proxy)", xlabel="iteration")
    axes[1].plot(x, history["true_score"], color="tab:green")
    axes[1].set(title="simulated human's score (true)", xlabel="iteration")
    axes[2].plot(x, history["kl"], color="tab:red", label="KL (k1, summed per answer)")
    if "beta" in history:
        twin = axes[2].twinx()
        twin.plot(x, history["beta"], color="grey", ls="--", label="β")
        twin.set_ylabel("β", color="grey")
    axes[2].set(title="KL to the SFT policy (nats)", xlabel="iteration")
    axes[2].legend(loc="upper left")
    return _finish(fig, path)


class LivePlot:
    """Redraws `ppo_curves` in a notebook after every iteration (pass `update` as the callback).

    Outside a notebook it only keeps the latest figure; call `save(path)` for a PNG.
    """

    def __init__(self, every: int = 1):
        self.every, self.handle, self.fig = every, None, None

    def update(self, history: pd.DataFrame) -> None:
        if len(history) % self.every:
            return
        plt.close(self.fig) if self.fig is not None else None
        self.fig = ppo_curves(history)
        try:
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is None:
                return
            if self.handle is None:
                self.handle = display(self.fig, display_id=True)
            else:
                self.handle.update(self.fig)
        except ImportError:  # plain Python: nothing to redraw
            pass

    def save(self, path: str | Path) -> None:
        if self.fig is not None:
            _finish(self.fig, path)
