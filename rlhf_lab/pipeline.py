"""Each stage of RLHF as one function: what the command line and `pipeline` run.

The lessons do the same steps cell by cell; these functions chain them with files in between:

    pretrain -> base/ -> sft -> sft/ -> label -> preferences.jsonl -> reward -> reward/ -> ppo -> ppo/

Every stage writes its checkpoint (safetensors) plus `metrics.json` and `history.csv`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from rlhf_lab import data, policy, world
from rlhf_lab.config import data_dir, get_scale, pick_device, seed_everything
from rlhf_lab.evaluate import eval_config, evaluate_policy

POLICY_PRESET = {"ci": "nano", "laptop": "nano", "gpu": "small"}  # model size trained from scratch


def save_run(out: Path, history: pd.DataFrame | None, metrics: dict, config=None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if history is not None:
        history.to_csv(out / "history.csv", index=False)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if config is not None:
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")


def train_lm_stage(stage: str, out: Path, scale: str | None = None, policy_dir: Path | None = None,
                   data_path: Path | None = None, steps: int | None = None, preset: str | None = None,
                   seed: int = 0, device: str | None = None, progress: bool = True) -> dict:
    """`pretrain` (a new model on the pretraining mix) or `sft` (fine-tune `policy_dir` on demonstrations)."""
    from rlhf_lab import sft

    scale = get_scale(scale)
    seed_everything(seed)
    device = pick_device(device)
    if stage == "pretrain":
        from rlhf_lab.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(data.vocabulary())
        model = policy.new_policy(preset or POLICY_PRESET[scale], tokenizer, seed=seed).to(device)
        overrides = {"seed": seed, **({"steps": steps} if steps else {})}
        cfg = sft.pretrain_config(scale, **overrides)
    else:
        model, tokenizer = policy.load_policy(policy_dir, device)
        cfg = sft.sft_config(scale, seed=seed, **({"steps": steps} if steps else {}))
    rows = data.load_dialogues(data_path or data.world_file("pretrain" if stage == "pretrain" else "sft"))
    if progress:
        print(f"{stage}: {len(rows)} dialogues, scale {scale}, {cfg.steps} steps on {device}")
    start = time.perf_counter()
    history = sft.train_language_model(model, tokenizer, rows, cfg, progress=progress, desc=stage)
    seconds = time.perf_counter() - start
    policy.save_policy(model, tokenizer, out)
    metrics, _ = evaluate_policy(model, tokenizer, eval_config(scale))
    metrics = {"final_loss": float(history["loss"].iloc[-1]), "train_seconds": seconds, **metrics}
    save_run(out, history, metrics, cfg)
    return metrics


def label_stage(policy_dir: Path, out: Path, n_pairs: int, k: int = 4, prompts_path: Path | None = None,
                seed: int = 0, device: str | None = None, annotator: world.Annotator = world.DEFAULT_ANNOTATOR) -> dict:
    """Sample K answers per training prompt from the policy and label their pairs with the simulated human."""
    from rlhf_lab.labelling import label_probabilities, sample_candidates, simulate_labels
    from rlhf_lab.preferences import PreferenceStore

    model, tokenizer = policy.load_policy(policy_dir, pick_device(device))
    prompts = [row["prompt"] for row in data.load_prompts(prompts_path or data.world_file("prompts"))]
    store = PreferenceStore(out)
    records, written, start = [], 0, 0
    while written < n_pairs and start < len(prompts):
        # Each prompt gives up to C(K,2) pairs; sample in chunks until enough new labels are stored
        # (a pair the store already holds -- same prompt and answers -- is a duplicate and skipped).
        chunk = prompts[start:start + 256]
        candidates = sample_candidates(model, tokenizer, chunk, k=k, seed=seed + start)
        new = simulate_labels(candidates, annotator, seed=seed + start, limit=n_pairs - written)
        kept = [record for record, is_new in zip(new, store.add_many(new)) if is_new]
        records += kept
        written += len(kept)
        start += len(chunk)
    pairs = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in records]
    return {"written": written, "prompts": start, "store": str(out),
            "noise_ceiling": world.noise_ceiling(label_probabilities(pairs, annotator)),
            "annotator": asdict(annotator)}


def reward_stage(prefs_path: Path, out: Path, scale: str | None = None, policy_dir: Path | None = None,
                 seed: int = 0, device: str | None = None, progress: bool = True,
                 annotator: world.Annotator = world.DEFAULT_ANNOTATOR) -> dict:
    """Train a reward model on a preference file, normalise it on SFT samples, measure it."""
    from rlhf_lab import reward
    from rlhf_lab.config import find_checkpoint
    from rlhf_lab.labelling import label_probabilities, sample_candidates
    from rlhf_lab.preferences import PreferenceStore

    scale = get_scale(scale)
    seed_everything(seed)
    device = pick_device(device)
    cfg = reward.reward_config(scale, seed=seed)
    store = PreferenceStore(prefs_path)
    if not len(store):
        raise ValueError(f"{prefs_path}: no preference records; make some with "
                         "python -m rlhf_lab label --simulate 6000 --policy DIR --out FILE")
    pairs = reward.pairs_from_records(store.records, cfg.learner_weight)
    train_pairs, heldout_pairs = reward.split_by_prompt(pairs, cfg.heldout_fraction, seed)
    policy_dir = Path(policy_dir or find_checkpoint("sft"))
    sft_model, tokenizer = policy.load_policy(policy_dir, device)
    reward_model = reward.RewardModel.from_policy(sft_model).to(device)
    start = time.perf_counter()
    history = reward.train_reward_model(reward_model, tokenizer, train_pairs, cfg, progress=progress)
    seconds = time.perf_counter() - start
    # Normalise on fresh samples of the starting policy (PPO.md rule 6).
    prompts = [row["prompt"] for row in data.load_prompts(data.world_file("prompts"))[:256]]
    candidates = sample_candidates(sft_model, tokenizer, prompts, k=1, temperature=0.7, seed=seed + 99)  # PPO's T
    reward.normalise(reward_model, tokenizer, [p for p, _ in candidates], [a[0] for _, a in candidates])
    reward_model.save(out, tokenizer)
    metrics = {"train_seconds": seconds, "train_pairs": len(train_pairs), "heldout_pairs": len(heldout_pairs),
               **reward.reward_report(reward_model, tokenizer, heldout_pairs)}
    probabilities = label_probabilities(heldout_pairs, annotator)
    metrics["noise_ceiling"] = world.noise_ceiling(probabilities)
    predicted = reward.predicted_preferences(reward_model, tokenizer, heldout_pairs)
    metrics["gap_by_kind"] = reward.gap_by_kind(heldout_pairs, predicted, probabilities).round(4).to_dict("index")
    save_run(out, history, metrics, cfg)
    return metrics


def ppo_stage(out: Path, scale: str | None = None, policy_dir: Path | None = None, reward_dir: Path | None = None,
              seed: int = 0, device: str | None = None, progress: bool = True, resume: bool = False,
              callback=None, **overrides) -> dict:
    """PPO from the SFT policy against the reward model; evaluated against SFT when done."""
    from rlhf_lab import ppo, reward
    from rlhf_lab.config import find_checkpoint
    from rlhf_lab.evaluate import behaviour_metrics, eval_prompts, sample_and_judge, versus

    scale = get_scale(scale)
    seed_everything(seed)
    device = pick_device(device)
    cfg = ppo.ppo_config(scale, seed=seed, **overrides)
    policy_dir = Path(policy_dir or find_checkpoint("sft"))
    start_dir = Path(out) if resume else policy_dir
    model, tokenizer = policy.load_policy(start_dir, device)
    reference, _ = policy.load_policy(policy_dir, device)
    reward_model, _ = reward.RewardModel.load(reward_dir or find_checkpoint("reward"), device)
    prompts = [row["prompt"] for row in data.load_prompts(data.world_file("prompts"))]
    demonstrations = data.load_dialogues(data.world_file("sft"))  # for the PPO-ptx term
    trainer = ppo.PPOTrainer(model, reference, reward_model, tokenizer, prompts, cfg, ptx_rows=demonstrations)
    if resume:
        trainer.resume(out)
    start = time.perf_counter()
    history = trainer.train(callback=callback, progress=progress, out=out)
    seconds = time.perf_counter() - start
    evaluation = eval_config(scale)
    prompts_for_eval = eval_prompts(evaluation)
    ppo_frame = sample_and_judge(model, tokenizer, prompts_for_eval, evaluation)
    sft_frame = sample_and_judge(reference, tokenizer, prompts_for_eval, evaluation)
    metrics = {"train_seconds": seconds, **behaviour_metrics(ppo_frame), **versus(ppo_frame, sft_frame),
               "final_kl": float(history["kl"].iloc[-5:].mean()), "final_beta": float(history["beta"].iloc[-1]),
               "final_reward": float(history["reward"].iloc[-5:].mean()),
               "sft": behaviour_metrics(sft_frame)}
    save_run(out, history, metrics, cfg)
    ppo_frame.to_csv(Path(out) / "samples.csv", index=False)
    return metrics


def run_pipeline(out: Path, scale: str | None = None, pretrain: bool = False, n_pairs: int | None = None,
                 seed: int = 0, device: str | None = None, progress: bool = True) -> dict:
    """Every stage end to end: (pretrain or the shipped base) -> SFT -> labels -> reward -> PPO -> report."""
    from rlhf_lab import plotting

    scale = get_scale(scale)
    out = Path(out)
    report: dict = {"scale": scale}
    stage_seconds = {}

    def timed(name, function, *args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        stage_seconds[name] = time.perf_counter() - started
        if progress:
            print(f"[{name}] {stage_seconds[name]:.0f} s")
        return result

    if pretrain:
        report["base"] = timed("pretrain", train_lm_stage, "pretrain", out / "base", scale, seed=seed, device=device,
                               progress=progress)
        base_dir = out / "base"
    else:
        base_dir = data_dir() / "checkpoints" / "base"
    report["sft"] = timed("sft", train_lm_stage, "sft", out / "sft", scale, policy_dir=base_dir, seed=seed,
                          device=device, progress=progress)
    n_pairs = n_pairs or {"ci": 800, "laptop": 8000, "gpu": 16000}[scale]
    report["labels"] = timed("label", label_stage, out / "sft", out / "preferences.jsonl", n_pairs, seed=seed,
                             device=device)
    report["reward"] = timed("reward", reward_stage, out / "preferences.jsonl", out / "reward", scale,
                             policy_dir=out / "sft", seed=seed, device=device, progress=progress)
    report["ppo"] = timed("ppo", ppo_stage, out / "ppo", scale, policy_dir=out / "sft", reward_dir=out / "reward",
                          seed=seed, device=device, progress=progress)
    report["stage_seconds"] = stage_seconds
    history = pd.read_csv(out / "ppo" / "history.csv")
    plotting.ppo_curves(history, path=out / "ppo_training.png")
    plotting.behaviour_bars({"SFT": report["ppo"]["sft"], "PPO": {k: v for k, v in report["ppo"].items() if k != "sft"}},
                            title="SFT vs PPO on held-out prompts", path=out / "behaviour.png")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
