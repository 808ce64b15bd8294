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
    window = max(1, len(history) // 8)  # batch means are noisy: show a moving average too
    for ax, column, colour, title in ((axes[0], "reward", "tab:blue", "reward model score (the proxy)"),
                                      (axes[1], "true_score", "tab:green", "simulated human's score (true)")):
        ax.plot(x, history[column], color=colour, alpha=0.35)
        ax.plot(x, history[column].rolling(window, min_periods=1).mean(), color=colour,
                label=f"moving average ({window})")
        ax.set(title=title, xlabel="iteration")
        ax.legend(loc="lower right")
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


# ----- lessons 06 and 07: the KL frontier, over-optimisation, the adaptive controller -----


def kl_frontier(frontier: pd.DataFrame, label: str = "beta", path: str | Path | None = None):
    """Proxy (reward model) and true (simulated human) score against KL, side by side, one point per run.

    Each point is labelled with its `label` column: a text as it is, a number as "beta=0.1".
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for ax, column, title, colour in ((axes[0], "reward", "reward model's score (proxy)", "tab:blue"),
                                      (axes[1], "true_score", "simulated human's score (true)", "tab:green")):
        ax.plot(frontier["kl"], frontier[column], "o-", color=colour)
        for _, row in frontier.iterrows():
            text = row[label] if isinstance(row[label], str) else f"{label}={row[label]:g}"
            ax.annotate(text, (row["kl"], row[column]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set(xlabel="KL(π ‖ π_SFT), nats per answer (k1)", title=title)
    return _finish(fig, path)


def overoptimisation(curve: pd.DataFrame, peak_iteration: int | None = None, path: str | Path | None = None):
    """Gao et al.'s picture: proxy and true score against sqrt(KL), and what the policy grew.

    `peak_iteration` marks the true score's peak (e.g. the smoothed one of
    `sweep.overoptimisation_summary`); by default the highest single measurement.
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    x = curve["sqrt_kl"]
    if peak_iteration is None:
        peak = curve["true_score"].idxmax()
    else:
        peak = curve.index[curve["iteration"] == peak_iteration][0]
    axes[0].plot(x, curve["reward"], "o-", color="tab:blue")
    axes[0].set(title="reward model's score (proxy)", xlabel="√KL (√nats)")
    axes[1].plot(x, curve["true_score"], "o-", color="tab:green")
    axes[1].axvline(x[peak], color="grey", ls="--", lw=0.8, label="true score's peak")
    axes[0].axvline(x[peak], color="grey", ls="--", lw=0.8)
    axes[1].set(title="simulated human's score (true)", xlabel="√KL (√nats)")
    axes[1].legend(loc="lower left")
    axes[2].plot(x, curve["words"], "o-", color="tab:purple", label="words per answer")
    axes[2].set(title="what grew", xlabel="√KL (√nats)", ylabel="words")
    twin = axes[2].twinx()
    for column, colour in (("flattery", "tab:orange"), ("padded", "tab:brown"), ("too_long", "tab:red"),
                           ("repetitive", "tab:grey"), ("harmful_not_refused", "black")):
        if column in curve:
            twin.plot(x, curve[column], ".--", color=colour, label=f"share {column}")
    twin.set(ylabel="share of answers", ylim=(0, 1.05))
    lines = axes[2].get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    axes[2].legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left")
    return _finish(fig, path)


def adaptive_kl(adaptive: pd.DataFrame, target: float, fixed: pd.DataFrame | None = None,
                path: str | Path | None = None):
    """KL per iteration under the adaptive controller (and a fixed β), with the target; β beside it."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    axes[0].plot(adaptive["iteration"], adaptive["kl"], color="tab:red", label="adaptive β")
    if fixed is not None and len(fixed):
        axes[0].plot(fixed["iteration"], fixed["kl"], color="tab:grey", label=f"fixed β = {fixed['beta'].iloc[0]:g}")
    axes[0].axhline(target, color="black", ls="--", lw=0.8, label=f"target {target:g} nats")
    axes[0].set(title="KL to the SFT policy (k1, summed per answer)", xlabel="iteration", ylabel="nats")
    axes[0].legend()
    axes[1].plot(adaptive["iteration"], adaptive["beta"], color="tab:red", label="adaptive β")
    if fixed is not None and len(fixed):
        axes[1].plot(fixed["iteration"], fixed["beta"], color="tab:grey", label="fixed β")
    axes[1].set(title="β", xlabel="iteration")
    axes[1].legend()
    return _finish(fig, path)


def method_frontier(table: pd.DataFrame, y: str = "true_score", path: str | Path | None = None, ax=None):
    """Every method on one chart: `y` against KL, one colour per method, points of a method joined.

    `table` has a `method` column, `kl`, `y`, and optionally `setting` (e.g. "n=4", "β=0.1") to label points.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 4.5))
    markers = "os^Dvp*hX"
    for i, (method, rows) in enumerate(table.groupby("method", sort=False)):
        rows = rows.sort_values("kl")
        ax.plot(rows["kl"], rows[y], marker=markers[i % len(markers)], ls="-" if len(rows) > 1 else "", label=method)
        if "setting" in rows:
            for _, row in rows.iterrows():
                if isinstance(row["setting"], str) and row["setting"]:
                    ax.annotate(row["setting"], (row["kl"], row[y]), textcoords="offset points", xytext=(3, 3),
                                fontsize=7)
    ax.set(xlabel="KL(π ‖ π_SFT), nats per answer", ylabel="simulated human's score" if y == "true_score" else y,
           title="the frontier: true score against KL")
    ax.legend(fontsize=8)
    return _finish(fig, path)


# ----- lesson 04: the reward model -----


def calibration_plot(table: pd.DataFrame, title: str = "reward model calibration",
                     path: str | Path | None = None, ax=None):
    """Observed against predicted preference probability (`reward.calibration_table`), with the diagonal.

    Marker area grows with the number of pairs in the bin; a calibrated model sits on the diagonal.
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfectly calibrated")
    ax.plot(table["predicted"], table["observed"], "-", color="tab:blue", lw=1)
    ax.scatter(table["predicted"], table["observed"], s=20 + 180 * table["pairs"] / table["pairs"].max(),
               color="tab:blue", zorder=3, label="reward model (area: pairs)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(first answer preferred)",
           ylabel="observed frequency", title=title)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    return _finish(fig, path)
