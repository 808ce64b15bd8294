"""Each stage of RLHF as one function: what the command line and `run_pipeline` run.

The lessons do the same steps cell by cell; these functions chain them with files in between:

    pretrain -> base/ -> sft -> sft/ -> label -> preferences.jsonl -> reward -> reward/ -> ppo -> ppo/
                                                                    and beyond PPO: dpo, rloo, grpo,
                                                                    best-of-n, sweep (lesson 06)

Every stage starts the same way (`_setup`: scale, seed, device), starts from the SFT policy
unless told otherwise (also the frozen reference), and writes its checkpoint (safetensors) plus
`metrics.json` (with the run's provenance), `history.csv` and a model card (`save_run`), each save
all at once (`checkpoints.atomic_folder`). Stages take keyword arguments only, so a call says what
each value is.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from rlhf_lab import best_of_n, data, dpo, plotting, policy, reward, reward_analysis, reward_hacking, rloo_grpo
from rlhf_lab.checkpoints import CheckpointError, atomic_folder, read_json, write_json
from rlhf_lab.config import (
    SAMPLING_TEMPERATURE,
    data_dir,
    find_checkpoint,
    for_scale,
    get_scale,
    pick_device,
    seed_everything,
)
from rlhf_lab.evaluate import (
    EvalConfig,
    behaviour_metrics,
    eval_config,
    heldout_comparison,
    heldout_prompts,
    judge_answers,
    measure_policy,
    versus,
)
from rlhf_lab.judge import DEFAULT_LABELLER, SimulatedLabeller, noise_ceiling
from rlhf_lab.labelling import label_probabilities, sample_candidates, simulate_labels
from rlhf_lab.preferences import PreferenceStore, read_preference_file
from rlhf_lab.provenance import run_record, write_model_card

BEST_OF_N_FILE = "best_of_n.json"


@dataclass
class PipelineConfig:
    """What `run_pipeline` makes, per scale: the policy size pretrained from scratch and the labels."""

    policy_preset: str = "nano"  # nano for CPUs, small for a GPU (policy.PRESETS)
    label_pairs: int = 8000  # simulated preference pairs
    candidates_per_prompt: int = 4  # K answers per labelling item: C(K, 2) pairs each


PIPELINE_PRESETS = {"ci": dict(label_pairs=800), "laptop": dict(),
                    "gpu": dict(policy_preset="small", label_pairs=16000)}


def pipeline_config(scale: str | None = None, **overrides) -> PipelineConfig:
    return for_scale(PipelineConfig, PIPELINE_PRESETS, scale, **overrides)


def save_run(out: Path, history: pd.DataFrame | None, metrics: dict, config=None,
             samples: pd.DataFrame | None = None, record: dict | None = None) -> None:
    """`history.csv`, `metrics.json`, `train_config.json` (and `samples.csv`) of a run, added to `out`
    all at once: what is already there (the checkpoint) stays (`checkpoints.atomic_folder`).

    `record` (`provenance.run_record`: scale, device, seed, inputs, versions, commit) is stored in
    metrics.json under "provenance"; a checkpoint folder also gets its model card (README.md).
    """
    metrics = metrics if record is None else {**metrics, "provenance": record}
    target = Path(out)
    with atomic_folder(target, keep_existing=True) as folder:
        if history is not None:
            history.to_csv(folder / "history.csv", index=False)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if config is not None:
            (folder / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
        if samples is not None:
            samples.to_csv(folder / "samples.csv", index=False)
        if (folder / "config.json").is_file() or (target / "config.json").is_file():  # a checkpoint: its card
            write_model_card(folder, metrics, target=target)


def _setup(scale: str | None, seed: int, device: str | None) -> tuple[str, torch.device]:
    """What every stage does first: pick the scale and the device, seed everything."""
    scale = get_scale(scale)
    seed_everything(seed)
    return scale, pick_device(device)


def _policy_and_reference(policy_dir: Path | None, device, start_dir: Path | None = None):
    """The policy to train (from `start_dir`, default the SFT policy) and the frozen SFT reference."""
    policy_dir = Path(policy_dir or find_checkpoint("sft"))
    model, tokenizer = policy.load_policy(start_dir or policy_dir, device)
    reference, _ = policy.load_policy(policy_dir, device)
    return model, reference, tokenizer


def _load_reward_model(reward_dir: Path | None, device):
    reward_model, _ = reward.RewardModel.load(reward_dir or find_checkpoint("reward"), device)
    return reward_model


def _provenance(stage: str, scale: str, device, seed: int, **inputs) -> dict:
    """`provenance.run_record` of a stage; every stage but labelling is measured on the held-out prompts."""
    inputs.setdefault("eval_prompts", data.world_file("eval_prompts"))
    return run_record(stage, scale=scale, device=device, seed=seed, inputs=inputs)


# =====================================================================================
# Stages 0-3: pretraining, SFT, labels, the reward model, PPO.
# =====================================================================================


def train_lm_stage(out: Path, *, stage: str, scale: str | None = None, policy_dir: Path | None = None,
                   data_path: Path | None = None, seed: int = 0, device: str | None = None, progress: bool = True,
                   preset: str | None = None, **overrides) -> dict:
    """`pretrain` (a new model on the pretraining mix) or `sft` (fine-tune `policy_dir` on demonstrations)."""
    from rlhf_lab import sft

    scale, device = _setup(scale, seed, device)
    # The data first: a bad line is reported before any model is loaded or trained.
    data_path = data_path or data.world_file("pretrain" if stage == "pretrain" else "sft")
    rows = data.load_dialogues(data_path)
    if stage == "pretrain":
        from rlhf_lab.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(data.vocabulary())
        model = policy.new_policy(preset or pipeline_config(scale).policy_preset, tokenizer, seed=seed).to(device)
        cfg = sft.pretrain_config(scale, seed=seed, **overrides)
    else:
        policy_dir = policy_dir or find_checkpoint("base")
        model, tokenizer = policy.load_policy(policy_dir, device)
        cfg = sft.sft_config(scale, seed=seed, **overrides)
    if progress:
        print(f"{stage}: {len(rows)} dialogues, scale {scale}, {cfg.steps} steps on {device}")
    started = time.perf_counter()
    history = sft.train_language_model(model, tokenizer, rows, cfg, progress=progress, desc=stage)
    seconds = time.perf_counter() - started
    policy.save_policy(model, tokenizer, out)
    metrics, _ = evaluate_on_heldout(model, tokenizer, scale, progress)
    metrics = {"final_loss": float(history["loss"].iloc[-1]), "train_seconds": seconds, **metrics}
    save_run(out, history, metrics, cfg,
             record=_provenance(stage, scale, device, seed, policy=policy_dir, data=data_path))
    return metrics


def evaluate_on_heldout(model, tokenizer, scale: str, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Behaviour figures of one policy on the held-out prompts (no reference, no reward model)."""
    cfg = eval_config(scale)
    prompts, families = heldout_prompts(cfg)
    frame = measure_policy(model, tokenizer, prompts, cfg, families, progress=progress)
    return behaviour_metrics(frame), frame


def label_stage(out: Path, *, policy_dir: Path, n_pairs: int, k: int = 4, prompts_path: Path | None = None,
                seed: int = 0, device: str | None = None, labeller: SimulatedLabeller = DEFAULT_LABELLER,
                progress: bool = True) -> dict:
    """Sample K answers per training prompt from the policy and label their pairs with the simulated human."""
    model, tokenizer = policy.load_policy(policy_dir, pick_device(device))
    prompts = [row["prompt"] for row in data.load_prompts(prompts_path or data.world_file("prompts"))]
    store = PreferenceStore(out)
    records, start = [], 0
    bar = tqdm(total=n_pairs, desc="simulated labels", unit="pair", disable=not progress)
    while len(records) < n_pairs and start < len(prompts):
        # Each prompt gives up to C(K,2) pairs; sample in chunks until enough new labels are stored
        # (a pair the store already holds -- same prompt and answers -- is a duplicate and skipped).
        chunk = prompts[start:start + 256]
        candidates = sample_candidates(model, tokenizer, chunk, k=k, seed=seed + start, progress=progress)
        new = simulate_labels(candidates, labeller, seed=seed + start, limit=n_pairs - len(records), progress=False)
        records += [record for record, is_new in zip(new, store.add_many(new)) if is_new]
        bar.update(len(records) - bar.n)
        start += len(chunk)
    bar.close()
    pairs = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in records]
    return {"written": len(records), "prompts": start, "store": str(out),
            "noise_ceiling": noise_ceiling(label_probabilities(pairs, labeller)), "labeller": asdict(labeller)}


def reward_stage(out: Path, *, prefs_path: Path, scale: str | None = None, policy_dir: Path | None = None,
                 seed: int = 0, device: str | None = None, progress: bool = True,
                 labeller: SimulatedLabeller = DEFAULT_LABELLER, **overrides) -> dict:
    """Train a reward model on a preference file, normalise it on SFT samples, measure it."""
    scale, device = _setup(scale, seed, device)
    cfg = reward.reward_config(scale, seed=seed, **overrides)
    store = read_preference_file(prefs_path)
    pairs = reward.pairs_from_records(store.records, cfg.learner_weight)
    train_pairs, heldout_pairs = reward.checked_split(pairs, cfg.heldout_fraction, seed, prefs_path)
    policy_dir = Path(policy_dir or find_checkpoint("sft"))
    sft_model, tokenizer = policy.load_policy(policy_dir, device)
    reward_model = reward.RewardModel.from_policy(sft_model).to(device)
    started = time.perf_counter()
    history = reward.train_reward_model(reward_model, tokenizer, train_pairs, cfg, progress=progress)
    seconds = time.perf_counter() - started
    # Normalise on fresh samples of the starting policy, at the temperature RL samples at (rule 6).
    prompts = data.training_prompts()[:cfg.normalise_samples]
    candidates = sample_candidates(sft_model, tokenizer, prompts, k=1, temperature=SAMPLING_TEMPERATURE, seed=seed + 99,
                                   progress=progress)
    reward.normalise_to_policy(reward_model, tokenizer, [p for p, _ in candidates], [a[0] for _, a in candidates])
    reward_model.save(out, tokenizer)
    probabilities = label_probabilities(heldout_pairs, labeller)
    predicted = reward_analysis.predicted_preferences(reward_model, tokenizer, heldout_pairs)
    gap = reward_analysis.gap_by_kind(heldout_pairs, predicted, probabilities)
    metrics = {"train_seconds": seconds, "prefs": str(Path(prefs_path).resolve()), "train_pairs": len(train_pairs),
               "heldout_pairs": len(heldout_pairs),
               **reward_analysis.reward_report(reward_model, tokenizer, heldout_pairs),
               "noise_ceiling": noise_ceiling(probabilities), "gap_by_kind": gap.round(4).to_dict("index")}
    record = _provenance("reward", scale, device, seed, policy=policy_dir, prefs=prefs_path,
                         normalise_prompts=data.world_file("prompts"))
    save_run(out, history, metrics, cfg, record=record)
    return metrics


def ppo_stage(out: Path, *, scale: str | None = None, policy_dir: Path | None = None, reward_dir: Path | None = None,
              seed: int = 0, device: str | None = None, progress: bool = True, resume: bool = False,
              callback=None, **overrides) -> dict:
    """PPO from the SFT policy against the reward model; evaluated against SFT when done."""
    from rlhf_lab import ppo

    scale, device = _setup(scale, seed, device)
    cfg = ppo.ppo_config(scale, seed=seed, **overrides)
    if resume:
        ppo.read_ppo_state(out)  # refuse a missing or mixed checkpoint before loading anything
    policy_dir, reward_dir = policy_dir or find_checkpoint("sft"), reward_dir or find_checkpoint("reward")
    model, reference, tokenizer = _policy_and_reference(policy_dir, device, Path(out) if resume else None)
    reward_model = _load_reward_model(reward_dir, device)
    demonstrations = data.load_dialogues(data.world_file("sft"))  # for the PPO-ptx term
    trainer = ppo.PPOTrainer(model, reference, reward_model, tokenizer, data.training_prompts(), cfg,
                             ptx_rows=demonstrations)
    if resume:
        trainer.resume(out)
    started = time.perf_counter()
    history = trainer.train(callback=callback, progress=progress, out=out)
    seconds = time.perf_counter() - started
    metrics, frame = heldout_comparison(model, reference, tokenizer, eval_config(scale), reward_model, progress)
    metrics = {"train_seconds": seconds, **metrics, "final_kl": float(history["kl"].iloc[-5:].mean()),
               "final_beta": float(history["beta"].iloc[-1]), "final_reward": float(history["reward"].iloc[-5:].mean())}
    save_run(out, history, metrics, cfg, samples=frame,
             record=_provenance("ppo", scale, device, seed, policy=policy_dir, reward=reward_dir,
                                prompts=data.world_file("prompts"), ptx=data.world_file("sft")))
    return metrics


def run_pipeline(out: Path, *, scale: str | None = None, pretrain: bool = False, seed: int = 0,
                 device: str | None = None, progress: bool = True, **overrides) -> dict:
    """Every stage end to end: (pretrain or the shipped base) -> SFT -> labels -> reward -> PPO -> report.

    `overrides` are `PipelineConfig` fields (e.g. `label_pairs=2000`).
    """
    scale, out = get_scale(scale), Path(out)
    cfg = pipeline_config(scale, **overrides)
    common = dict(scale=scale, seed=seed, device=device, progress=progress)
    report: dict = {"scale": scale, "config": asdict(cfg)}
    stage_seconds = {}

    def timed(name, function, *args, **kwargs):
        started = time.perf_counter()
        report[name] = function(*args, **kwargs)
        stage_seconds[name] = time.perf_counter() - started
        if progress:
            print(f"[{name}] {stage_seconds[name]:.0f} s")

    base_dir = out / "base" if pretrain else data_dir() / "checkpoints" / "base"
    if pretrain:
        timed("base", train_lm_stage, base_dir, stage="pretrain", preset=cfg.policy_preset, **common)
    timed("sft", train_lm_stage, out / "sft", stage="sft", policy_dir=base_dir, **common)
    timed("labels", label_stage, out / "preferences.jsonl", policy_dir=out / "sft", n_pairs=cfg.label_pairs,
          k=cfg.candidates_per_prompt, seed=seed, device=device, progress=progress)
    timed("reward", reward_stage, out / "reward", prefs_path=out / "preferences.jsonl", policy_dir=out / "sft",
          **common)
    timed("ppo", ppo_stage, out / "ppo", policy_dir=out / "sft", reward_dir=out / "reward", **common)
    report["stage_seconds"] = stage_seconds
    plotting.ppo_curves(pd.read_csv(out / "ppo" / "history.csv"), path=out / "ppo_training.png")
    ppo_metrics = {k: v for k, v in report["ppo"].items() if k != "sft"}
    plotting.behaviour_bars({"SFT": report["ppo"]["sft"], "PPO": ppo_metrics},
                            title="SFT vs PPO on held-out prompts", path=out / "behaviour.png")
    write_json(out / "report.json", report)
    return report


# =====================================================================================
# Beyond PPO: DPO, RLOO and GRPO, best-of-n, and lesson 06's sweep.
# =====================================================================================


def dpo_stage(out: Path, *, scale: str | None = None, policy_dir: Path | None = None, prefs_path: Path | None = None,
              seed: int = 0, device: str | None = None, progress: bool = True, callback=None, **overrides) -> dict:
    """DPO from the SFT policy on a preference file (default: the one the reward model learned from)."""
    scale, device = _setup(scale, seed, device)
    cfg = dpo.dpo_config(scale, seed=seed, **overrides)
    prefs_path = Path(prefs_path or dpo.reward_model_preferences())
    pairs = dpo.preference_pairs(prefs_path, cfg.learner_weight)
    reward.checked_split(pairs, cfg.heldout_fraction, cfg.seed, prefs_path)  # the same split train_dpo makes
    policy_dir = policy_dir or find_checkpoint("sft")
    model, reference, tokenizer = _policy_and_reference(policy_dir, device)
    started = time.perf_counter()
    history = dpo.train_dpo(model, reference, tokenizer, pairs, cfg, progress=progress, callback=callback)
    seconds = time.perf_counter() - started
    policy.save_policy(model, tokenizer, out)
    metrics, frame = heldout_comparison(model, reference, tokenizer, eval_config(scale), progress=progress)
    last = history.dropna(subset=["heldout_accuracy"]).iloc[-1]
    metrics = {"train_seconds": seconds, "pairs": len(pairs), "prefs": str(prefs_path), "beta": cfg.beta, **metrics,
               "final_heldout_accuracy": float(last["heldout_accuracy"]), "final_kl": float(last["kl"]),
               "final_reward_margin": float(history["reward_margin"].iloc[-10:].mean())}
    save_run(out, history, metrics, cfg, samples=frame,
             record=_provenance("dpo", scale, device, seed, policy=policy_dir, prefs=prefs_path))
    return metrics


def group_stage(out: Path, *, method: str, scale: str | None = None, policy_dir: Path | None = None,
                reward_dir: Path | None = None, seed: int = 0, device: str | None = None, progress: bool = True,
                callback=None, **overrides) -> dict:
    """RLOO or GRPO (`method`) from the SFT policy against the reward model."""
    scale, device = _setup(scale, seed, device)
    cfg = rloo_grpo.group_config(method, scale, seed=seed, **overrides)
    policy_dir, reward_dir = policy_dir or find_checkpoint("sft"), reward_dir or find_checkpoint("reward")
    model, reference, tokenizer = _policy_and_reference(policy_dir, device)
    reward_model = _load_reward_model(reward_dir, device)
    trainer = rloo_grpo.GroupTrainer(model, reference, reward_model, tokenizer, data.training_prompts(), cfg)
    started = time.perf_counter()
    history = trainer.train(callback=callback, progress=progress)
    seconds = time.perf_counter() - started
    policy.save_policy(model, tokenizer, out)
    metrics, frame = heldout_comparison(model, reference, tokenizer, eval_config(scale), reward_model, progress)
    metrics = {"train_seconds": seconds, "method": method, "kl_in": cfg.kl_placement, "beta": cfg.beta, **metrics,
               "final_kl": float(history["kl"].iloc[-5:].mean()),
               "final_reward": float(history["reward"].iloc[-5:].mean())}
    save_run(out, history, metrics, cfg, samples=frame,
             record=_provenance(method, scale, device, seed, policy=policy_dir, reward=reward_dir,
                                prompts=data.world_file("prompts")))
    return metrics


def best_of_n_stage(out: Path, *, scale: str | None = None, policy_dir: Path | None = None,
                    reward_dir: Path | None = None, seed: int = 0, device: str | None = None,
                    progress: bool = True, **overrides) -> dict:
    """Best-of-n with the reward model on the held-out prompts; history.csv holds every n' = 1, 2, 4, ... n."""
    scale, device = _setup(scale, seed, device)
    cfg = best_of_n.best_of_n_config(scale, **overrides)
    policy_dir = Path(policy_dir or find_checkpoint("sft")).resolve()
    reward_dir = Path(reward_dir or find_checkpoint("reward")).resolve()
    model, tokenizer = policy.load_policy(policy_dir, device)
    reward_model = _load_reward_model(reward_dir, device)
    prompts, families = heldout_prompts(eval_config(scale))
    started = time.perf_counter()
    candidates = best_of_n.best_of_n_sample(model, reward_model, tokenizer, prompts, cfg.n, cfg.temperature,
                                            cfg.max_new_tokens, torch.Generator().manual_seed(cfg.seed),
                                            cfg.missing_end_penalty, progress)
    seconds = time.perf_counter() - started
    ladder = [2**i for i in range(cfg.n.bit_length()) if 2**i < cfg.n] + [cfg.n]
    judged = best_of_n.best_of_n_ladder(candidates, ladder, families)
    history = pd.DataFrame([{"n": k, "kl": best_of_n.best_of_n_kl(k), "reward": float(frame["reward"].mean()),
                             "true_score": float(frame["total"].mean()), **versus(frame, judged[1])}
                            for k, frame in judged.items()])
    frame = judged[cfg.n]
    metrics = {"sample_seconds": seconds, "n": cfg.n, **behaviour_metrics(frame), **versus(frame, judged[1]),
               "kl": best_of_n.best_of_n_kl(cfg.n), "heldout_true_score": float(frame["total"].mean()),
               "heldout_reward": float(candidates["reward"].mean()), "sft": behaviour_metrics(judged[1])}
    with atomic_folder(out) as folder:  # the settings and the run's files, all at once
        (folder / BEST_OF_N_FILE).write_text(json.dumps({"policy": str(policy_dir), "reward": str(reward_dir),
                                                          **asdict(cfg)}, indent=2) + "\n")
        samples = candidates.assign(total=frame["total"], flags=frame["flags"])
        save_run(folder, history, metrics, cfg, samples=samples,
                 record=_provenance("best-of-n", scale, device, cfg.seed, policy=policy_dir, reward=reward_dir))
    return metrics


def measure_output(path: Path, prompts: list[str], families: list[str], cfg: EvalConfig, device=None) -> pd.DataFrame:
    """`evaluate.measure_policy` for any stage's output folder: a policy, or a best-of-n folder.

    A best-of-n folder answers with best-of-n sampling from the policy and reward model it names.
    """
    path, device = Path(path), pick_device(device)
    settings_file = path / BEST_OF_N_FILE
    if not settings_file.is_file():
        model, tokenizer = policy.load_policy(path, device)
        return measure_policy(model, tokenizer, prompts, cfg, families)
    settings = best_of_n_settings(settings_file)
    model, tokenizer = policy.load_policy(settings["policy"], device)
    reward_model = _load_reward_model(Path(settings["reward"]), device)
    chosen = best_of_n.best_of_n_sample(model, reward_model, tokenizer, prompts, settings["n"], cfg.temperature,
                                        cfg.max_new_tokens, torch.Generator().manual_seed(cfg.seed),
                                        settings["missing_end_penalty"])
    return judge_answers(prompts, list(chosen["answer"]), list(chosen["finished"]), families)


def best_of_n_settings(settings_file: Path) -> dict:
    """What a best-of-n folder's best_of_n.json says: which policy and reward model, n, the penalty."""
    settings = read_json(settings_file)
    needed = ("policy", "reward", "n", "missing_end_penalty")
    missing = [name for name in needed if name not in settings] if isinstance(settings, dict) else list(needed)
    if missing:
        raise CheckpointError(settings_file, f"no {', '.join(missing)} (expected the settings best-of-n wrote)")
    return settings


def sweep_stage(out: Path, *, scale: str | None = None, policy_dir: Path | None = None, reward_dir: Path | None = None,
                seed: int = 0, device: str | None = None, progress: bool = True, **overrides) -> dict:
    """Lesson 06 from the shell: the β sweep, the weak-leash run and the adaptive controller, with plots.

    Writes frontier.csv (= history.csv: one row per β), sweep_histories.csv, sweep_answers.csv,
    weak_leash.csv (the held-out measurements of the long run), weak_leash_answers.csv,
    adaptive_kl.csv, metrics.json and the figures frontier.png, overoptimisation.png and adaptive_kl.png.
    """
    scale, device = _setup(scale, seed, device)
    cfg = reward_hacking.sweep_config(scale, seed=seed, **overrides)
    policy_dir, reward_dir = Path(policy_dir or find_checkpoint("sft")), reward_dir or find_checkpoint("reward")
    sft_policy, tokenizer = policy.load_policy(policy_dir, device)
    reward_model = _load_reward_model(reward_dir, device)
    started = time.perf_counter()
    frontier, histories, sweep_answers = reward_hacking.beta_sweep(sft_policy, reward_model, tokenizer, cfg, scale,
                                                                   progress)
    curve, answers, _ = reward_hacking.weak_leash_run(sft_policy, reward_model, tokenizer, cfg, scale, progress)
    adaptive = reward_hacking.adaptive_kl_run(sft_policy, reward_model, tokenizer, cfg, scale, progress)
    seconds = time.perf_counter() - started
    tables = {"sweep_histories": histories, "sweep_answers": sweep_answers, "frontier": frontier,
              "weak_leash": curve, "weak_leash_answers": answers, "adaptive_kl": adaptive}
    summary = reward_hacking.overoptimisation_summary(curve)
    metrics = {"seconds": seconds, "betas": list(cfg.betas), **summary, "frontier": frontier.to_dict("records")}
    with atomic_folder(out) as folder:  # every table and figure at once
        for name, table in tables.items():
            table.to_csv(folder / f"{name}.csv", index=False)
        plotting.kl_frontier(frontier, path=folder / "frontier.png")
        plotting.overoptimisation(curve, summary["peak_iteration"], path=folder / "overoptimisation.png")
        fixed = histories[histories["beta_setting"] == cfg.adaptive_beta] if cfg.adaptive_beta in cfg.betas else None
        plotting.adaptive_kl(adaptive, cfg.adaptive_target, fixed, path=folder / "adaptive_kl.png")
        record = _provenance("sweep", scale, device, seed, policy=policy_dir, reward=reward_dir,
                             prompts=data.world_file("prompts"))
        save_run(folder, frontier, metrics, cfg, record=record)
    return metrics
