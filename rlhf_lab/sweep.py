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

# What a reward hack looks like in this world: the reward model learned from labellers who liked
# long and flattering answers, so these are the behaviours to watch.
HACK_COLUMNS = ("words", "flattery", "padded", "too_long", "repetitive")


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
    frame["flattery"] = [world._count(world.normalise(text), world.FLATTERY) for text in rollout.texts]
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
    return point


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
    betas: tuple[float, ...] = (0.0, 0.02, 0.05, 0.2)  # fixed KL coefficients; β = 0 is no leash at all
    iterations: int = 20  # PPO iterations per sweep run (shorter than lesson 05's run)
    batch_size: int = 32
    lr: float = 1e-4  # a faster learner than lesson 05's, so the runs spread out along the KL axis
    # The weak-leash run: no KL penalty, a long run and a high learning rate, to over-optimise.
    leash_beta: float = 0.0
    leash_iterations: int = 60
    leash_lr: float = 2e-4
    leash_batch_size: int = 32
    measure_every: int = 5  # iterations between held-out measurements of the weak-leash run
    # The adaptive controller demo: a horizon scaled to a short run, so β can visibly move.
    adaptive_beta: float = 0.02
    adaptive_target: float = 2.0
    adaptive_horizon: int = 320
    adaptive_iterations: int = 30
    probe_per_family: int = 10  # held-out prompts per family for every measurement
    seed: int = 0


SWEEP_PRESETS = {
    "ci": dict(betas=(0.0, 0.05, 0.2, 1.0), iterations=4, batch_size=16, leash_iterations=8, leash_batch_size=16,
               measure_every=2, adaptive_iterations=6, probe_per_family=4),
    "laptop": dict(),
    "gpu": dict(iterations=40, batch_size=64, leash_iterations=120, leash_batch_size=64, adaptive_iterations=60,
                probe_per_family=40),
}


def sweep_config(scale: str | None = None, **overrides) -> SweepConfig:
    return for_scale(SweepConfig, SWEEP_PRESETS, scale, **overrides)


def _ppo_trainer(sft_policy, reward_model, tokenizer, scale: str | None, **ppo_overrides) -> PPOTrainer:
    """A fresh PPO trainer starting from (a copy of) the SFT policy, which is also the reference."""
    cfg = ppo_config(scale, **ppo_overrides)
    return PPOTrainer(copy.deepcopy(sft_policy), copy.deepcopy(sft_policy), reward_model, tokenizer,
                      training_questions(), cfg)


def beta_sweep(sft_policy, reward_model, tokenizer, cfg: SweepConfig, scale: str | None = None,
               progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PPO at each fixed β in `cfg.betas`, each measured on the held-out probe prompts.

    Returns:
        frontier: one row per β -- reward, true_score, kl (and the hack columns, wall time).
        histories: every run's per-iteration PPO history, with a `beta` column to tell them apart.
    """
    questions, families = probe_questions(scale, cfg.probe_per_family)
    rows, histories = [], []
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
    return pd.DataFrame(rows), pd.concat(histories, ignore_index=True)


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
    questions, families = probe_questions(scale, cfg.probe_per_family)
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

    The curves are smoothed with a centred rolling mean over `smooth` measurements first, so one
    lucky batch of samples does not make the peak.

    Returns: peak_iteration, peak_true, peak_reward, peak_kl, final_true, final_reward, final_kl,
    true_drop (peak_true - final_true) and reward_gain_after_peak (final_reward - peak_reward).
    """
    smoothed = curve[["true_score", "reward", "kl"]].rolling(smooth, center=True, min_periods=1).mean()
    peak = int(smoothed["true_score"].idxmax())
    last = len(curve) - 1
    return {"peak_iteration": int(curve["iteration"].iloc[peak]), "peak_true": float(smoothed["true_score"].iloc[peak]),
            "peak_reward": float(smoothed["reward"].iloc[peak]), "peak_kl": float(smoothed["kl"].iloc[peak]),
            "final_true": float(smoothed["true_score"].iloc[last]), "final_reward": float(smoothed["reward"].iloc[last]),
            "final_kl": float(smoothed["kl"].iloc[last]),
            "true_drop": float(smoothed["true_score"].iloc[peak] - smoothed["true_score"].iloc[last]),
            "reward_gain_after_peak": float(smoothed["reward"].iloc[last] - smoothed["reward"].iloc[peak])}
