"""How fast does RLHF Lab train here? Training, generation and PPO throughput, and peak memory.

    python benchmarks/bench_training.py                  # the laptop preset (the default)
    python benchmarks/bench_training.py --scale gpu      # another preset
    python benchmarks/bench_training.py --quick          # a few seconds: tiny settings (the smoke test)
    python benchmarks/bench_training.py --json           # the same figures as one JSON object

It measures three things, each with the code the lessons use:

1. training tokens/s: the pretraining loop (`sft.train_language_model`) on a sample of the
   pretraining corpus, a fresh policy of the scale's size, for a few steps (the first ones, which
   pay for one-off set-up, left out) -- on a recent GPU with bf16 autocast (`config.autocast`) and
   again in float32, so you see what mixed precision buys at this size;
2. generation tokens/s: the `policy.generate` helper on a batch of held-out prompts, with the
   SFT checkpoint (`find_checkpoint("sft")`);
3. PPO episodes/s (one episode = one prompt answered, scored and trained on), with the time share
   of generation, scoring (log-probs, values, reward model) and updates, read from the PPO
   history columns `generation_seconds`, `scoring_seconds` and `update_seconds`; "other" is the
   rest (the simulated human's judging for the log, bookkeeping).

Then the process's peak resident memory (RSS).

The timings depend on the machine and on the number of torch threads (`--threads`, else torch's
default, which $OMP_NUM_THREADS sets): on a machine whose cores are busy with other work, more
threads than free cores can make torch several times slower. Compare numbers only from the same
machine, threads and load.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
from transformers.utils import logging as transformers_logging

from rlhf_lab import data, ppo, sft
from rlhf_lab.config import autocast, find_checkpoint, get_scale, pick_device, seed_everything
from rlhf_lab.evaluate import eval_config
from rlhf_lab.policy import generate, load_policy, new_policy
from rlhf_lab.reward import RewardModel
from rlhf_lab.stages import pipeline_config

# How much work each measurement does: enough steps to average out the first, slower ones.
FULL = dict(train_steps=30, train_rows=4096, generation_prompts=128, ppo_iterations=3)
WARMUP_STEPS = 5  # training steps left out of the timing
# --quick: seconds in all; the figures are then only a smoke test, not a measurement.
QUICK = dict(train_steps=3, train_rows=256, generation_prompts=8, ppo_iterations=1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def bench_training(scale: str, device: torch.device, steps: int, rows: int, quick: bool,
                   mixed_precision: bool = True) -> dict:
    """Tokens/s of the pretraining loop: real (non-pad) tokens seen per second of training."""
    corpus = data.load_dialogues(data.world_file("pretrain"))
    # A random sample: encoding all 24,000 dialogues would take longer than the steps themselves,
    # and the loop draws its batches at random anyway, so the sample has the same length mix.
    sample = [corpus[i] for i in torch.randperm(len(corpus), generator=torch.Generator().manual_seed(0))[:rows]]
    _, tokenizer = load_policy(find_checkpoint("sft"))
    preset = pipeline_config(scale).policy_preset
    model = new_policy(preset, tokenizer).to(device)
    overrides = dict(steps=steps, log_every=1, warmup_steps=1, mixed_precision=mixed_precision)
    if quick:
        overrides["batch_size"] = 8
    cfg = sft.pretrain_config(scale, **overrides)
    history = sft.train_language_model(model, tokenizer, sample, cfg, progress=False, desc="bench")
    # The first steps pay for one-off set-up (CUDA kernels, allocator): time the steps after them.
    elapsed = history["tokens"] / history["tokens_per_s"]
    warm = min(WARMUP_STEPS, len(history) - 2) if len(history) > 2 else 0
    tokens = int(history["tokens"].iloc[-1] - history["tokens"].iloc[warm])
    seconds = float(elapsed.iloc[-1] - elapsed.iloc[warm])
    precision = "bf16 autocast" if autocast_active(device, mixed_precision) else "float32"
    return {"policy_preset": preset, "parameters": sum(p.numel() for p in model.parameters()), "steps": steps,
            "batch_size": cfg.batch_size, "precision": precision, "tokens": tokens, "tokens_per_s": tokens / seconds}


def autocast_active(device: torch.device, mixed_precision: bool) -> bool:
    return isinstance(autocast(device, mixed_precision), torch.autocast)


def bench_generation(scale: str, device: torch.device, n_prompts: int, quick: bool) -> dict:
    """Tokens/s of `generate`: response tokens (end token included, pads not) per second."""
    model, tokenizer = load_policy(find_checkpoint("sft"), device)
    cfg = eval_config(scale)
    # The held-out prompts file interleaves the families, so its first rows are a fair mix.
    questions = [row["prompt"] for row in data.load_prompts()][:n_prompts]
    max_new_tokens = 16 if quick else cfg.max_new_tokens
    generate(model, tokenizer, questions[:2], max_new_tokens=4)  # warm-up: first calls allocate
    started = time.perf_counter()
    rollout = generate(model, tokenizer, questions, max_new_tokens=max_new_tokens, temperature=cfg.temperature,
                       generator=torch.Generator().manual_seed(cfg.seed))
    seconds = time.perf_counter() - started
    tokens = int(rollout.response_mask.sum())
    return {"prompts": len(questions), "max_new_tokens": max_new_tokens, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds}


def bench_ppo(scale: str, device: torch.device, iterations: int, quick: bool) -> dict:
    """PPO episodes/s and where the time goes, from the trainer's own timing columns."""
    model, tokenizer = load_policy(find_checkpoint("sft"), device)
    reference, _ = load_policy(find_checkpoint("sft"), device)
    try:
        reward_model, _ = RewardModel.load(find_checkpoint("reward"), device)
        reward_source = "trained reward model"
    except FileNotFoundError:
        # The cost of scoring does not depend on what the head learned, so an untrained head on
        # the SFT backbone times the same; answers' lengths may differ a little.
        reward_model = RewardModel.from_policy(model).to(device)
        reward_source = "untrained reward head (no reward checkpoint found)"
    overrides = dict(iterations=iterations, save_every=10**9)
    if quick:
        overrides |= dict(batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=16)
    cfg = ppo.ppo_config(scale, **overrides)
    prompts = [row["prompt"] for row in data.load_prompts(data.world_file("prompts"))]
    trainer = ppo.PPOTrainer(model, reference, reward_model, tokenizer, prompts, cfg)
    started = time.perf_counter()
    history = trainer.train(progress=False)
    seconds = time.perf_counter() - started
    phases = {name: float(history[f"{name}_seconds"].sum()) for name in ("generation", "scoring", "update")}
    phases["other"] = max(0.0, seconds - sum(phases.values()))
    episodes = cfg.batch_size * iterations
    return {"reward_model": reward_source, "iterations": iterations, "batch_size": cfg.batch_size,
            "ppo_epochs": cfg.ppo_epochs, "episodes": episodes, "seconds": seconds,
            "episodes_per_s": episodes / seconds,
            "time_share": {name: phase_seconds / seconds for name, phase_seconds in phases.items()}}


def run(scale: str, quick: bool = False, device: str | None = None) -> dict:
    settings = QUICK if quick else FULL
    torch_device = pick_device(device)
    seed_everything(0)
    training = bench_training(scale, torch_device, settings["train_steps"], settings["train_rows"], quick)
    # Where mixed precision is on (a recent CUDA GPU), time float32 too: does it help at this size?
    float32 = (bench_training(scale, torch_device, settings["train_steps"], settings["train_rows"], quick,
                              mixed_precision=False) if autocast_active(torch_device, True) else None)
    return {
        "scale": scale, "quick": quick, "device": str(torch_device), "torch_threads": torch.get_num_threads(),
        "training": training, "training_float32": float32,
        "generation": bench_generation(scale, torch_device, settings["generation_prompts"], quick),
        "ppo": bench_ppo(scale, torch_device, settings["ppo_iterations"], quick),
        "peak_rss_mb": peak_rss_mb(),
    }


def print_report(result: dict) -> None:
    training, generation, ppo_result = result["training"], result["generation"], result["ppo"]
    print(f"RLHF Lab benchmark: scale {result['scale']}{' (quick)' if result['quick'] else ''}, "
          f"device {result['device']}, {result['torch_threads']} torch thread(s)")
    print(f"  training    {training['tokens_per_s']:10.0f} tokens/s    "
          f"(pretraining, {training['policy_preset']} policy of {training['parameters']:,} parameters, "
          f"{training['steps']} steps of {training['batch_size']} dialogues, {training['precision']})")
    if result["training_float32"]:
        print(f"  training    {result['training_float32']['tokens_per_s']:10.0f} tokens/s    (the same in float32)")
    print(f"  generation  {generation['tokens_per_s']:10.0f} tokens/s    "
          f"({generation['prompts']} prompts, up to {generation['max_new_tokens']} new tokens, SFT policy)")
    print(f"  PPO         {ppo_result['episodes_per_s']:10.1f} episodes/s  "
          f"({ppo_result['iterations']} iteration(s) of {ppo_result['batch_size']} episodes, "
          f"{ppo_result['ppo_epochs']} epoch(s); {ppo_result['reward_model']})")
    for name, share in ppo_result["time_share"].items():
        print(f"      {name:10s} {100 * share:5.1f} % of PPO time")
    print(f"  peak RSS    {result['peak_rss_mb']:10.0f} MiB")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("ci", "laptop", "gpu"), default="laptop",
                        help="the preset whose batch sizes and model size are timed (default: laptop)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, a few seconds (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()  # "Loading weights" bars would clutter the report
    result = run(get_scale(args.scale), args.quick, args.device)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return result


if __name__ == "__main__":
    main()
