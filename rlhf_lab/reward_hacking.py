"""Reward hacking and the KL leash: the experiments of lesson 06 (and the frontier lesson 07 reuses).

Every RLHF method moves the policy away from the SFT reference and buys reward-model score with
KL (see `evaluate.frontier_point`). Gao et al. (2022), "Scaling Laws for Reward Model
Overoptimization", measured the true score against d = sqrt(KL) and found the proxy rising
steadily while the true score rises, peaks and falls: past some distance from the reference the
policy is learning the reward model's mistakes. These experiments show it here:

    beta_sweep          PPO at several fixed KL coefficients β, one frontier point each
    weak_leash_run      one long PPO run with β = 0, measured every few iterations
    adaptive_kl_run     PPO with the adaptive controller, to plot β and KL chasing the target
    overoptimisation_summary, behaviour_change   what the weak-leash run did, in numbers
    trajectory_at_kl, leash_vs_early_stopping     a leash against stopping the unleashed run early

Gao et al. also found that the KL penalty acts much like early stopping: a leashed run ends about
where an unleashed one passes through on its way out. `leash_vs_early_stopping` puts the two side
by side at the same KL.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from rlhf_lab.config import for_scale
from rlhf_lab.data import training_prompts
from rlhf_lab.evaluate import HACK_COLUMNS, HACK_NAMES, eval_config, frontier_point, heldout_prompts, measure_policy
from rlhf_lab.ppo import PPOTrainer, ppo_config


@dataclass
class SweepConfig:
    # The β sweep: fixed KL coefficients (β = 0 is no leash at all), short runs with a fast learner
    # so that the runs spread out along the KL axis.
    betas: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 1.0)
    iterations: int = 20  # PPO iterations per sweep run
    batch_size: int = 32
    lr: float = 3e-4  # ten times lesson 05's: each run travels further in its 20 iterations
    frontier_per_family: int = 40  # held-out prompts per family for each frontier point
    # The weak-leash run: no KL penalty and a long run, to over-optimise the reward model.
    leash_beta: float = 0.0
    leash_iterations: int = 80
    leash_lr: float = 2e-4
    leash_batch_size: int = 32
    measure_every: int = 5  # iterations between held-out measurements of the weak-leash run
    curve_per_family: int = 10  # held-out prompts per family for each of those measurements
    # The adaptive controller: it starts from the strongest leash of the sweep and has to find the
    # β that spends the target KL. The horizon is scaled to a short run, so that β can visibly
    # move (by at most a factor 1 ± 0.2 · batch_size / horizon per iteration).
    adaptive_beta: float = 1.0
    adaptive_target: float = 1.5
    adaptive_horizon: int = 64
    adaptive_iterations: int = 25
    seed: int = 0


SWEEP_PRESETS = {
    "ci": dict(betas=(0.0, 0.1, 0.3, 1.0), iterations=3, batch_size=16, frontier_per_family=4, leash_iterations=8,
               leash_batch_size=16, measure_every=2, curve_per_family=4, adaptive_iterations=6,
               adaptive_horizon=32),
    "laptop": dict(),
    "gpu": dict(iterations=40, batch_size=64, leash_iterations=160, leash_batch_size=64, adaptive_iterations=50,
                adaptive_horizon=128, curve_per_family=20),
}


def sweep_config(scale: str | None = None, **overrides) -> SweepConfig:
    return for_scale(SweepConfig, SWEEP_PRESETS, scale, **overrides)


def _ppo_trainer(sft_policy, reward_model, tokenizer, scale: str | None, **ppo_overrides) -> PPOTrainer:
    """A fresh PPO trainer starting from (a copy of) the SFT policy, which is also the reference."""
    cfg = ppo_config(scale, **ppo_overrides)
    return PPOTrainer(copy.deepcopy(sft_policy), copy.deepcopy(sft_policy), reward_model, tokenizer,
                      training_prompts(), cfg)


class _Probe:
    """The held-out prompts a frontier point is measured on, and how (`evaluate.measure_policy`)."""

    def __init__(self, scale: str | None, per_family: int, reward_model):
        self.cfg = eval_config(scale, prompts_per_family=per_family)
        self.prompts, self.families = heldout_prompts(self.cfg)
        self.reward_model = reward_model

    def measure(self, trainer: PPOTrainer) -> pd.DataFrame:
        return measure_policy(trainer.policy, trainer.tokenizer, self.prompts, self.cfg, self.families,
                              trainer.reference, self.reward_model, progress=False)  # under PPO's bar


def beta_sweep(sft_policy, reward_model, tokenizer, cfg: SweepConfig, scale: str | None = None,
               progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """PPO at each fixed β in `cfg.betas`, each measured on the held-out probe prompts.

    Returns:
        frontier: one row per β -- reward, true_score, kl (and the hack columns, wall time).
        histories: every run's per-iteration PPO history, with a `beta_setting` column.
        answers: every run's measured answers (`measure_policy` rows), with a `beta_setting` column.
    """
    probe = _Probe(scale, cfg.frontier_per_family, reward_model)
    rows, histories, answers = [], [], []
    for beta in cfg.betas:
        trainer = _ppo_trainer(sft_policy, reward_model, tokenizer, scale, beta=beta, adaptive_kl=False,
                               iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
        started = time.perf_counter()
        history = trainer.train(progress=progress)
        seconds = time.perf_counter() - started
        frame = probe.measure(trainer)
        rows.append({"beta": beta, **frontier_point(frame), "seconds": seconds})
        histories.append(history.assign(beta_setting=beta))
        answers.append(frame.assign(beta_setting=beta))
    return pd.DataFrame(rows), pd.concat(histories, ignore_index=True), pd.concat(answers, ignore_index=True)


def weak_leash_run(sft_policy, reward_model, tokenizer, cfg: SweepConfig, scale: str | None = None,
                   progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One long PPO run with a weak (or no) KL leash, measured on held-out prompts as it goes.

    Every `measure_every` iterations (and before the first) the policy answers the probe prompts
    and `measure_policy` records its proxy score, true score, KL and behaviours.

    Returns:
        curve: one row per measurement -- iteration, reward, true_score, kl, sqrt_kl, hack columns.
        answers: every measured answer, with its `iteration` (to read samples before and after the peak).
        history: the PPO run's own per-iteration history.
    """
    probe = _Probe(scale, cfg.curve_per_family, reward_model)
    rows, answers = [], []

    def measure(trainer, iteration: int) -> None:
        frame = probe.measure(trainer)
        rows.append({"iteration": iteration, **frontier_point(frame)})
        answers.append(frame.assign(iteration=iteration))

    trainer = _ppo_trainer(sft_policy, reward_model, tokenizer, scale, beta=cfg.leash_beta, adaptive_kl=False,
                           iterations=cfg.leash_iterations, batch_size=cfg.leash_batch_size, lr=cfg.leash_lr,
                           seed=cfg.seed)

    def callback(history: pd.DataFrame) -> None:
        done = len(history)
        if done % cfg.measure_every == 0 or done == cfg.leash_iterations:
            measure(trainer, done)

    measure(trainer, 0)  # the SFT starting point
    history = trainer.train(callback=callback, progress=progress)
    curve = pd.DataFrame(rows)
    # Gao et al. plot against d = sqrt(KL); a k1 mean can dip a hair below 0 at the start.
    curve["sqrt_kl"] = curve["kl"].clip(lower=0).map(math.sqrt)
    return curve, pd.concat(answers, ignore_index=True), history


def adaptive_kl_run(sft_policy, reward_model, tokenizer, cfg: SweepConfig, scale: str | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """PPO with the adaptive KL controller (Ziegler et al.): β moves so that KL approaches the target.

    The horizon is scaled down with the run: β can change by at most a factor
    1 ± 0.2 · batch_size / horizon per iteration, so the classic horizon of 10000 would keep β
    frozen for the whole of a 30-iteration run.
    """
    trainer = _ppo_trainer(sft_policy, reward_model, tokenizer, scale, beta=cfg.adaptive_beta, adaptive_kl=True,
                           kl_target=cfg.adaptive_target, kl_horizon=cfg.adaptive_horizon,
                           iterations=cfg.adaptive_iterations, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    return trainer.train(progress=progress)


def overoptimisation_summary(curve: pd.DataFrame, smooth: int = 3) -> dict[str, float]:
    """Where the true score peaked in a weak-leash curve, and where both scores ended.

    Every value is a centred mean over `smooth` consecutive measurements (so one lucky batch of
    samples cannot make the peak); `final_*` is the mean of the last `smooth` measurements.

    Returns: peak_iteration, peak_true, peak_reward, peak_kl, final_true, final_reward, final_kl,
    true_drop (peak_true - final_true) and reward_gain_after_peak (final_reward - peak_reward).
    """
    smooth = min(smooth, len(curve))
    smoothed = curve[["true_score", "reward", "kl"]].rolling(smooth, center=True, min_periods=smooth).mean()
    smoothed = smoothed.dropna()
    peak, last = smoothed["true_score"].idxmax(), smoothed.index[-1]
    return {"peak_iteration": int(curve.loc[peak, "iteration"]), "peak_true": float(smoothed.loc[peak, "true_score"]),
            "peak_reward": float(smoothed.loc[peak, "reward"]), "peak_kl": float(smoothed.loc[peak, "kl"]),
            "final_true": float(smoothed.loc[last, "true_score"]), "final_reward": float(smoothed.loc[last, "reward"]),
            "final_kl": float(smoothed.loc[last, "kl"]),
            "true_drop": float(smoothed.loc[peak, "true_score"] - smoothed.loc[last, "true_score"]),
            "reward_gain_after_peak": float(smoothed.loc[last, "reward"] - smoothed.loc[peak, "reward"])}


def behaviour_change(curve: pd.DataFrame, before: int, after: int) -> pd.DataFrame:
    """The hack columns of a weak-leash curve at two iterations, and how much each grew.

    `growth` is after - before: in words for `words`, in share of answers for the others.
    """
    rows = curve.set_index("iteration")
    table = pd.DataFrame({f"iteration {before}": rows.loc[before, list(HACK_COLUMNS)],
                          f"iteration {after}": rows.loc[after, list(HACK_COLUMNS)]}).astype(float)
    table["growth"] = table.iloc[:, 1] - table.iloc[:, 0]
    table.index = [f"{HACK_NAMES[name]} ({'words' if name == 'words' else 'share'})" for name in table.index]
    table.index.name = "behaviour"
    return table.assign(column=list(HACK_COLUMNS))


def trajectory_at_kl(curve: pd.DataFrame, kl: float, columns: tuple[str, ...] = ("true_score", "reward")) -> dict:
    """Where a run's measurements (in iteration order) first reach `kl`: stopping the run there.

    Each column is interpolated linearly in KL between the last measurement below `kl` and the
    first at or above it: value = v0 + (kl - kl0) / (kl1 - kl0) · (v1 - v0). Returns the
    `iteration` (interpolated too) and the columns; all NaN if the run never reached `kl`.
    """
    kls = curve["kl"].to_numpy()
    reached = [i for i in range(len(kls)) if kls[i] >= kl]
    if not reached:
        return {"iteration": math.nan, **{column: math.nan for column in columns}}
    after = reached[0]
    before = max(after - 1, 0)
    span = kls[after] - kls[before]
    weight = (kl - kls[before]) / span if span > 0 else 1.0
    values = {column: curve[column].to_numpy(dtype=float) for column in ("iteration", *columns)}
    return {column: float(value[before] + weight * (value[after] - value[before])) for column, value in values.items()}


def leash_vs_early_stopping(frontier: pd.DataFrame, curve: pd.DataFrame, sft: Mapping[str, float]) -> pd.DataFrame:
    """Each leashed run of the β sweep (β > 0) next to the unleashed run stopped at the same KL.

    `frontier`: `beta_sweep`'s rows (beta, kl, true_score, reward); `curve`: `weak_leash_run`'s;
    `sft`: the SFT policy's true_score and reward on the frontier's prompts. Scores are gains over
    each one's own start (`sft`, and the curve's iteration 0), because the two are measured on
    different held-out prompts. Columns: beta, kl, leash_true_gain, stopped_true_gain,
    leash_reward_gain, stopped_reward_gain, stopped_iteration, and
    true_difference = leash_true_gain - stopped_true_gain (NaN where the curve never got that far).
    """
    start = curve.iloc[0]
    rows = []
    for _, run in frontier[frontier["beta"] > 0].sort_values("kl").iterrows():
        stopped = trajectory_at_kl(curve, run["kl"])
        rows.append({"beta": run["beta"], "kl": run["kl"],
                     "leash_true_gain": run["true_score"] - sft["true_score"],
                     "stopped_true_gain": stopped["true_score"] - start["true_score"],
                     "leash_reward_gain": run["reward"] - sft["reward"],
                     "stopped_reward_gain": stopped["reward"] - start["reward"],
                     "stopped_iteration": stopped["iteration"]})
    table = pd.DataFrame(rows)
    table["true_difference"] = table["leash_true_gain"] - table["stopped_true_gain"]
    return table
