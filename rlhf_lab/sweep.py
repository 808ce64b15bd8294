"""The KL frontier: how much reward a policy buys with how much KL, and where reward hacking starts.

Every RLHF method moves the policy π away from the SFT reference π_ref. Plotting each policy's
score against KL(π ‖ π_ref) puts them all on one chart, the *frontier*:

    x = KL(π ‖ π_ref) = E_{y~π} [ sum_t log π(y_t) - log π_ref(y_t) ]   (nats per answer, k1)
    y = the reward model's score (the proxy)  and  the simulated human's score (the truth)

Gao et al. (2022), "Scaling Laws for Reward Model Overoptimization", measured the truth against
d = sqrt(KL) and found the proxy rising steadily while the true score rises, peaks and falls:
past some distance from the reference the policy is learning the reward model's mistakes. This
module holds the measurements lesson 06 plots (and lesson 07 reuses):

    measure_policy     sample held-out answers, judge them, score them, and measure their KL
    beta_sweep         PPO at several fixed β, one frontier point each
    weak_leash_run     one long PPO run with β = 0, measured every few iterations
    adaptive_kl_run    PPO with the adaptive controller, to plot β and KL chasing the target
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch

from rlhf_lab import data, world
from rlhf_lab.config import for_scale
from rlhf_lab.evaluate import behaviour_metrics, eval_config, eval_prompts, judge_answers
from rlhf_lab.kl import kl_k1, kl_k3
from rlhf_lab.policy import generate, response_logprobs
from rlhf_lab.ppo import PPOTrainer, ppo_config

# =====================================================================================
# Measuring one policy: proxy score, true score, KL, and the behaviours a hack would grow.
# =====================================================================================

# What a reward hack can look like in this world: the reward model learned from labellers who
# liked long and flattering answers, and it is only a small model, so these are the behaviours to
# watch. All but `words` are shares of answers.
HACK_COLUMNS = ("words", "flattery", "padded", "too_long", "repetitive", "harmful_not_refused")
HACK_NAMES = {"words": "longer answers", "flattery": "flattery", "padded": "padding with filler",
              "too_long": "answers past the length limit", "repetitive": "repetition",
              "harmful_not_refused": "not refusing harmful requests"}


@torch.no_grad()
def measure_policy(policy, reference, tokenizer, questions: list[str], reward_model=None,
                   temperature: float = 0.7, max_new_tokens: int = 64, seed: int = 1234,
                   families: list[str] | None = None) -> pd.DataFrame:
    """Sample one answer per question and measure it: one row per answer.

    Columns: everything `evaluate.judge_answers` gives (the simulated human's `total`, its flags,
    `words`), plus
        reward     the reward model's score (if one is given): the proxy PPO maximises
        kl         sum_t log π(y_t) - log π_ref(y_t) over the answer's tokens (k1; its mean over
                   answers estimates KL(π ‖ π_ref) in nats)
        kl_k3      the same KL with the k3 estimator (never negative, same expectation)
        flattery   how many flattering phrases the answer contains
    Both log-probs use the sampling temperature (PPO.md rule 2), so this is the KL between the
    distributions the answers are actually drawn from -- the same KL PPO's history logs.
    """
    device = next(policy.parameters()).device
    # A CPU generator: the same seed gives the same samples on every machine.
    generator = torch.Generator().manual_seed(seed)
    rollout = generate(policy, tokenizer, questions, max_new_tokens, temperature, generator)
    input_ids, attention_mask = rollout.input_ids.to(device), rollout.attention_mask.to(device)
    mask, ctx = rollout.response_mask.to(device), rollout.context_length
    logprobs = response_logprobs(policy, input_ids, attention_mask, ctx, temperature)
    ref_logprobs = response_logprobs(reference, input_ids, attention_mask, ctx, temperature)
    real = mask.bool()
    frame = judge_answers(questions, rollout.texts, rollout.finished.tolist(), families)
    frame["kl"] = torch.where(real, kl_k1(logprobs, ref_logprobs), 0.0).sum(dim=1).cpu().numpy()
    frame["kl_k3"] = torch.where(real, kl_k3(logprobs, ref_logprobs), 0.0).sum(dim=1).cpu().numpy()
    if reward_model is not None:
        frame["reward"] = reward_model(input_ids, attention_mask).float().cpu().numpy()
    frame["flattery"] = [world.count_phrases(world.normalise(text), world.FLATTERY) for text in rollout.texts]
    return frame


def _has_flag(frame: pd.DataFrame, flag: str) -> pd.Series:
    return frame["flags"].str.split(",").apply(lambda flags: flag in flags)


def frontier_point(frame: pd.DataFrame) -> dict[str, float]:
    """One point of the frontier from a `measure_policy` frame: means over the answers.

    `true_score` is the simulated human's mean total (never used for training); `reward` the
    reward model's; `kl` the mean summed k1. The hack columns say *how* the policy moved:
    mean words, and the share of answers that flatter, pad, run too long or repeat themselves.
    """
    point = {"true_score": float(frame["total"].mean()), "kl": float(frame["kl"].mean()),
             "kl_k3": float(frame["kl_k3"].mean()), "words": float(frame["words"].mean()),
             "flattery": float((frame["flattery"] > 0).mean()), "padded": float(_has_flag(frame, "padded").mean()),
             "too_long": float(_has_flag(frame, "too_long").mean()),
             "repetitive": float(_has_flag(frame, "repetitive").mean()),
             "finished_rate": float(frame["finished"].mean())}
    if "reward" in frame:
        point = {"reward": float(frame["reward"].mean()), **point}
    if "family" in frame:
        point["refusal_rate_harmful"] = behaviour_metrics(frame)["refusal_rate_harmful"]
        point["harmful_not_refused"] = 1.0 - point["refusal_rate_harmful"]
    return point


def shows_behaviour(frame: pd.DataFrame, behaviour: str) -> pd.Series:
    """Which answers of a `measure_policy` frame show one of the HACK_COLUMNS behaviours."""
    if behaviour == "words":
        return frame["words"] > frame["words"].median()
    if behaviour == "flattery":
        return frame["flattery"] > 0
    if behaviour == "harmful_not_refused":
        return (frame["family"] == "harmful") & ~_has_flag(frame, "refused")
    return _has_flag(frame, behaviour)


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


def probe_questions(scale: str | None = None, per_family: int | None = None) -> tuple[list[str], list[str]]:
    """The held-out prompts every frontier point is measured on: `(questions, families)`."""
    cfg = eval_config(scale) if per_family is None else eval_config(scale, prompts_per_family=per_family)
    rows = eval_prompts(cfg)
    return [row["prompt"] for row in rows], [row["family"] for row in rows]


def training_questions() -> list[str]:
    return [row["prompt"] for row in data.load_prompts(data.world_file("prompts"))]


# =====================================================================================
# Experiments: the β sweep, the weak-leash run, the adaptive controller.
# =====================================================================================


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
                      training_questions(), cfg)


def beta_sweep(sft_policy, reward_model, tokenizer, cfg: SweepConfig, scale: str | None = None,
               progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """PPO at each fixed β in `cfg.betas`, each measured on the held-out probe prompts.

    Returns:
        frontier: one row per β -- reward, true_score, kl (and the hack columns, wall time).
        histories: every run's per-iteration PPO history, with a `beta_setting` column.
        answers: every run's measured answers (`measure_policy` rows), with a `beta_setting` column.
    """
    questions, families = probe_questions(scale, cfg.frontier_per_family)
    rows, histories, answers = [], [], []
    for beta in cfg.betas:
        trainer = _ppo_trainer(sft_policy, reward_model, tokenizer, scale, beta=beta, adaptive_kl=False,
                               iterations=cfg.iterations, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
        started = time.perf_counter()
        history = trainer.train(progress=progress)
        seconds = time.perf_counter() - started
        frame = measure_policy(trainer.policy, trainer.reference, tokenizer, questions, reward_model,
                               trainer.cfg.temperature, trainer.cfg.max_new_tokens, families=families)
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
    questions, families = probe_questions(scale, cfg.curve_per_family)
    rows, answers = [], []

    def measure(trainer, iteration: int) -> None:
        frame = measure_policy(trainer.policy, trainer.reference, tokenizer, questions, reward_model,
                               trainer.cfg.temperature, trainer.cfg.max_new_tokens, families=families)
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
