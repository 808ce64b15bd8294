"""The stages beyond PPO as functions: what `python -m rlhf_lab dpo | best-of-n | rloo | grpo | sweep` run.

Each follows `pipeline.ppo_stage`: start from the SFT policy (also the frozen reference), train,
then answer the held-out prompts and compare with SFT on the very same prompts. Every stage
writes `metrics.json` and `history.csv` into its output folder, and a policy checkpoint that
`python -m rlhf_lab evaluate --policy DIR` loads -- except best-of-n, which trains nothing: its
folder holds `best_of_n.json` (which policy, which reward model, which n), and
`sample_and_judge_output` answers with best-of-n sampling from it.

All methods report the same frontier figures, measured the same way (`sweep.measure_policy` on
the held-out prompts): the simulated human's score, the reward model's score, and the KL to the
SFT policy at the sampling temperature.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from rlhf_lab import best_of_n, dpo, plotting, policy, rloo_grpo, sweep, world
from rlhf_lab.config import find_checkpoint, get_scale, pick_device, seed_everything
from rlhf_lab.evaluate import (EvalConfig, behaviour_metrics, eval_config, eval_prompts, judge_answers,
                               sample_and_judge, versus)
from rlhf_lab.pipeline import save_run
from rlhf_lab.reward import RewardModel

BEST_OF_N_FILE = "best_of_n.json"


def _load_reward_model(reward_dir: Path | None, device):
    reward_model, _ = RewardModel.load(reward_dir or find_checkpoint("reward"), device)
    return reward_model


def heldout_comparison(model, reference, tokenizer, scale: str, reward_model=None) -> tuple[dict, pd.DataFrame]:
    """Behaviour of `model` on the held-out prompts, head to head with the reference (SFT).

    Returns the metrics (behaviour rates, win_rate against SFT, the held-out frontier point:
    true score, reward-model score when a reward model is given, KL to SFT) and the judged answers.
    """
    evaluation = eval_config(scale)
    rows = eval_prompts(evaluation)
    questions, families = [row["prompt"] for row in rows], [row["family"] for row in rows]
    measure = dict(reward_model=reward_model, temperature=evaluation.temperature,
                   max_new_tokens=evaluation.max_new_tokens, seed=evaluation.seed, families=families)
    frame = sweep.measure_policy(model, reference, tokenizer, questions, **measure)
    sft_frame = sweep.measure_policy(reference, reference, tokenizer, questions, **measure)
    metrics = {**behaviour_metrics(frame), **versus(frame, sft_frame),
               **{f"heldout_{name}": value for name, value in sweep.frontier_point(frame).items()},
               "sft": {**behaviour_metrics(sft_frame), "heldout_true_score": float(sft_frame["total"].mean())}}
    return metrics, frame


def dpo_stage(out: Path, scale: str | None = None, policy_dir: Path | None = None, prefs_path: Path | None = None,
              seed: int = 0, device: str | None = None, progress: bool = True, callback=None, **overrides) -> dict:
    """DPO from the SFT policy on a preference file (default: the one the reward model learned from)."""
    scale = get_scale(scale)
    seed_everything(seed)
    device = pick_device(device)
    cfg = dpo.dpo_config(scale, seed=seed, **overrides)
    prefs_path = Path(prefs_path or dpo.reward_model_preferences())
    pairs = dpo.preference_pairs(prefs_path)
    policy_dir = Path(policy_dir or find_checkpoint("sft"))
    model, tokenizer = policy.load_policy(policy_dir, device)
    reference, _ = policy.load_policy(policy_dir, device)
    started = time.perf_counter()
    history = dpo.train_dpo(model, reference, tokenizer, pairs, cfg, progress=progress, callback=callback)
    seconds = time.perf_counter() - started
    policy.save_policy(model, tokenizer, out)
    metrics, frame = heldout_comparison(model, reference, tokenizer, scale)
    last = history.dropna(subset=["heldout_accuracy"]).iloc[-1]
    metrics = {"train_seconds": seconds, "pairs": len(pairs), "prefs": str(prefs_path), "beta": cfg.beta, **metrics,
               "final_heldout_accuracy": float(last["heldout_accuracy"]), "final_kl": float(last["kl"]),
               "final_reward_margin": float(history["reward_margin"].iloc[-10:].mean())}
    save_run(out, history, metrics, cfg)
    frame.to_csv(Path(out) / "samples.csv", index=False)
    return metrics


def group_stage(method: str, out: Path, scale: str | None = None, policy_dir: Path | None = None,
                reward_dir: Path | None = None, seed: int = 0, device: str | None = None, progress: bool = True,
                callback=None, **overrides) -> dict:
    """RLOO or GRPO (`method`) from the SFT policy against the reward model."""
    scale = get_scale(scale)
    seed_everything(seed)
    device = pick_device(device)
    cfg = rloo_grpo.group_config(method, scale, seed=seed, **overrides)
    policy_dir = Path(policy_dir or find_checkpoint("sft"))
    model, tokenizer = policy.load_policy(policy_dir, device)
    reference, _ = policy.load_policy(policy_dir, device)
    reward_model = _load_reward_model(reward_dir, device)
    trainer = rloo_grpo.GroupTrainer(model, reference, reward_model, tokenizer, sweep.training_questions(), cfg)
    started = time.perf_counter()
    history = trainer.train(callback=callback, progress=progress)
    seconds = time.perf_counter() - started
    policy.save_policy(model, tokenizer, out)
    metrics, frame = heldout_comparison(model, reference, tokenizer, scale, reward_model)
    metrics = {"train_seconds": seconds, "method": method, "kl_in": cfg.kl_placement, "beta": cfg.beta, **metrics,
               "final_kl": float(history["kl"].iloc[-5:].mean()),
               "final_reward": float(history["reward"].iloc[-5:].mean())}
    save_run(out, history, metrics, cfg)
    frame.to_csv(Path(out) / "samples.csv", index=False)
    return metrics


def best_of_n_ladder(candidates: pd.DataFrame, ns: list[int],
                     families: list[str] | None = None) -> dict[int, pd.DataFrame]:
    """Best-of-n' answers for every n' in `ns` from one `best_of_n_sample` frame of n >= max(ns) candidates.

    The first n' of n independent candidates are themselves n' independent candidates, so one
    sampling pass gives the whole ladder. Returns a judged frame for each n': `judge_answers`
    columns plus `reward`, `flattery` and the analytic `kl`, like a `sweep.measure_policy` frame.
    """
    available = len(candidates["candidates"].iloc[0])
    if max(ns) > available:
        raise ValueError(f"best_of_n_ladder: n = {max(ns)} needs that many candidates, the frame has {available}")
    judged = {}
    for n in ns:
        scores = torch.tensor([row[:n] for row in candidates["candidate_scores"]])
        choice = best_of_n.best_of_n_select(scores).tolist()
        answers = [row[c] for row, c in zip(candidates["candidates"], choice)]
        finished = [row[c] for row, c in zip(candidates["candidate_finished"], choice)]
        frame = judge_answers(list(candidates["prompt"]), answers, finished, families)
        # The penalised score the choice was made on (the raw score is only kept for the chosen n).
        frame["reward"] = [row[c] for row, c in zip(candidates["candidate_scores"], choice)]
        # The same columns as `sweep.measure_policy`, so `sweep.frontier_point` works on the frame:
        # best-of-n's KL is the analytic one (no per-answer estimate), so kl_k3 is left empty.
        frame["kl"], frame["kl_k3"] = best_of_n.best_of_n_kl(n), float("nan")
        frame["flattery"] = [world.count_phrases(world.normalise(answer), world.FLATTERY) for answer in answers]
        judged[n] = frame
    return judged


def best_of_n_stage(out: Path, scale: str | None = None, policy_dir: Path | None = None,
                    reward_dir: Path | None = None, n: int | None = None, seed: int = 0, device: str | None = None,
                    progress: bool = True) -> dict:
    """Best-of-n with the reward model on the held-out prompts; history.csv holds every n' = 1, 2, 4, ... n."""
    scale = get_scale(scale)
    seed_everything(seed)
    device = pick_device(device)
    cfg = best_of_n.best_of_n_config(scale, **({"n": n} if n else {}))
    policy_dir = Path(policy_dir or find_checkpoint("sft")).resolve()
    reward_dir = Path(reward_dir or find_checkpoint("reward")).resolve()
    model, tokenizer = policy.load_policy(policy_dir, device)
    reward_model = _load_reward_model(reward_dir, device)
    evaluation = eval_config(scale, seed=cfg.seed)
    rows = eval_prompts(evaluation)
    questions, families = [row["prompt"] for row in rows], [row["family"] for row in rows]
    started = time.perf_counter()
    candidates = best_of_n.best_of_n_sample(model, reward_model, tokenizer, questions, cfg.n, cfg.temperature,
                                            cfg.max_new_tokens, torch.Generator().manual_seed(cfg.seed),
                                            cfg.missing_end_penalty)
    seconds = time.perf_counter() - started
    ladder = [2**i for i in range(cfg.n.bit_length()) if 2**i < cfg.n] + [cfg.n]
    judged = best_of_n_ladder(candidates, ladder, families)
    history = pd.DataFrame([{"n": k, "kl": best_of_n.best_of_n_kl(k), "reward": float(frame["reward"].mean()),
                             "true_score": float(frame["total"].mean()), **versus(frame, judged[1])}
                            for k, frame in judged.items()])
    frame = judged[cfg.n]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / BEST_OF_N_FILE).write_text(json.dumps({"policy": str(policy_dir), "reward": str(reward_dir),
                                                   **asdict(cfg)}, indent=2) + "\n")
    metrics = {"sample_seconds": seconds, "n": cfg.n, **behaviour_metrics(frame), **versus(frame, judged[1]),
               "kl": best_of_n.best_of_n_kl(cfg.n), "heldout_true_score": float(frame["total"].mean()),
               "heldout_reward": float(candidates["reward"].mean()), "sft": behaviour_metrics(judged[1])}
    save_run(out, history, metrics, cfg)
    candidates.assign(total=frame["total"], flags=frame["flags"]).to_csv(out / "samples.csv", index=False)
    return metrics


def sample_and_judge_output(path: Path, prompts: list[dict], cfg: EvalConfig, device=None) -> pd.DataFrame:
    """`evaluate.sample_and_judge` for any stage's output folder: a policy, or a best-of-n folder.

    A best-of-n folder answers with best-of-n sampling from the policy and reward model it names.
    """
    path = Path(path)
    device = pick_device(device)
    settings_file = path / BEST_OF_N_FILE
    if not settings_file.is_file():
        model, tokenizer = policy.load_policy(path, device)
        return sample_and_judge(model, tokenizer, prompts, cfg)
    settings = json.loads(settings_file.read_text())
    model, tokenizer = policy.load_policy(settings["policy"], device)
    reward_model = _load_reward_model(Path(settings["reward"]), device)
    questions = [row["prompt"] for row in prompts]
    chosen = best_of_n.best_of_n_sample(model, reward_model, tokenizer, questions, settings["n"], cfg.temperature,
                                        cfg.max_new_tokens, torch.Generator().manual_seed(cfg.seed),
                                        settings["missing_end_penalty"])
    families = [row["family"] for row in prompts]
    return judge_answers(questions, list(chosen["answer"]), list(chosen["finished"]), families)


def sweep_stage(out: Path, scale: str | None = None, policy_dir: Path | None = None, reward_dir: Path | None = None,
                seed: int = 0, device: str | None = None, progress: bool = True, **overrides) -> dict:
    """Lesson 06 from the shell: the β sweep, the weak-leash run and the adaptive controller, with plots.

    Writes frontier.csv (= history.csv: one row per β), sweep_histories.csv, sweep_answers.csv, weak_leash.csv (the
    held-out measurements of the long run), weak_leash_answers.csv, adaptive_kl.csv, metrics.json
    and the figures frontier.png, overoptimisation.png and adaptive_kl.png.
    """
    scale = get_scale(scale)
    seed_everything(seed)
    device = pick_device(device)
    cfg = sweep.sweep_config(scale, seed=seed, **overrides)
    sft_policy, tokenizer = policy.load_policy(Path(policy_dir or find_checkpoint("sft")), device)
    reward_model = _load_reward_model(reward_dir, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frontier, histories, sweep_answers = sweep.beta_sweep(sft_policy, reward_model, tokenizer, cfg, scale, progress)
    curve, answers, _ = sweep.weak_leash_run(sft_policy, reward_model, tokenizer, cfg, scale, progress)
    adaptive = sweep.adaptive_kl_run(sft_policy, reward_model, tokenizer, cfg, scale, progress)
    seconds = time.perf_counter() - started
    histories.to_csv(out / "sweep_histories.csv", index=False)
    sweep_answers.to_csv(out / "sweep_answers.csv", index=False)
    frontier.to_csv(out / "frontier.csv", index=False)
    curve.to_csv(out / "weak_leash.csv", index=False)
    answers.to_csv(out / "weak_leash_answers.csv", index=False)
    adaptive.to_csv(out / "adaptive_kl.csv", index=False)
    plotting.kl_frontier(frontier, path=out / "frontier.png")
    summary = sweep.overoptimisation_summary(curve)
    plotting.overoptimisation(curve, summary["peak_iteration"], path=out / "overoptimisation.png")
    fixed = histories[histories["beta_setting"] == cfg.adaptive_beta] if cfg.adaptive_beta in cfg.betas else None
    plotting.adaptive_kl(adaptive, cfg.adaptive_target, fixed, path=out / "adaptive_kl.png")
    metrics = {"seconds": seconds, "betas": list(cfg.betas), **summary,
               "frontier": frontier.to_dict("records")}
    save_run(out, frontier, metrics, cfg)
    return metrics
