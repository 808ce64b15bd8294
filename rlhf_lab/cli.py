"""The command line the lessons and the tests share: `python -m rlhf_lab <command> --help`.

    data       regenerate the world's corpora under data/world
    pretrain   train the base model from scratch on the pretraining mix
    sft        fine-tune a policy on the demonstrations
    label      sample answers from a policy and label pairs with the simulated human
    reward     train a reward model on a preference file
    ppo        PPO with a KL penalty against a reward model
    pipeline   every stage end to end (data -> SFT -> labels -> reward model -> PPO -> report)
    evaluate   behaviour figures of a policy (and, with --versus, a head-to-head)
    dpo        DPO on a preference file (no reward model, no sampling)
    best-of-n  answer with the best of n samples by the reward model (trains nothing)
    rloo       RLOO: policy gradient with a leave-one-out group baseline
    grpo       GRPO: policy gradient with a standardised group baseline
    sweep      lesson 06 from the shell: β sweep (KL frontier), weak-leash run, adaptive KL
    colab      rewrite every lesson's Open-in-Colab badge and install cell (and the README's badges)

Every training command takes --scale {ci,laptop,gpu} and --out DIR, shows progress, saves a
safetensors checkpoint with `history.csv` and `metrics.json` beside it, and ends with a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlhf_lab.config import SCALES, get_scale, pick_device


def _common(parser: argparse.ArgumentParser, out: bool = True) -> None:
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help="preset sizes and steps (default: $RLHF_LAB_SCALE, else gpu on CUDA, else laptop)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--seed", type=int, default=0)
    if out:
        parser.add_argument("--out", required=True, type=Path, help="output directory")


def _summary(title: str, metrics: dict) -> None:
    print(f"\n{title}")
    for key, value in metrics.items():
        print(f"  {key:26s} {value:.3f}" if isinstance(value, float) else f"  {key:26s} {value}")


def cmd_data(args) -> dict:
    from rlhf_lab.data import CorpusConfig, generate_corpora

    paths = generate_corpora(args.out, CorpusConfig(seed=args.seed))
    for name, path in paths.items():
        print(f"  {name:14s} {path}")
    return {name: str(path) for name, path in paths.items()}


def cmd_train_lm(args, stage: str) -> dict:
    from rlhf_lab.pipeline import train_lm_stage

    metrics = train_lm_stage(stage, args.out, args.scale, getattr(args, "policy", None), args.data, args.steps,
                             getattr(args, "preset", None), args.seed, args.device)
    _summary(f"{stage} done in {metrics['train_seconds']:.0f} s -> {args.out}", metrics)
    return metrics


def cmd_label(args) -> dict:
    from rlhf_lab.pipeline import label_stage

    result = label_stage(args.policy, args.out, args.simulate, args.k, args.prompts, args.seed, args.device)
    _summary(f"{result['written']} simulated labels appended to {args.out}", result)
    return result


def cmd_reward(args) -> dict:
    from rlhf_lab.pipeline import reward_stage

    metrics = reward_stage(args.prefs, args.out, args.scale, args.policy, args.seed, args.device)
    _summary(f"reward model trained in {metrics['train_seconds']:.0f} s -> {args.out}", metrics)
    return metrics


def cmd_ppo(args) -> dict:
    from rlhf_lab.pipeline import ppo_stage

    overrides = {name: getattr(args, name) for name in ("iterations", "beta") if getattr(args, name) is not None}
    metrics = ppo_stage(args.out, args.scale, args.policy, args.reward, args.seed, args.device, resume=args.resume,
                        **overrides)
    _summary(f"PPO done in {metrics['train_seconds']:.0f} s -> {args.out}", {k: v for k, v in metrics.items() if k != "sft"})
    return metrics


def cmd_pipeline(args) -> dict:
    from rlhf_lab.pipeline import run_pipeline

    report = run_pipeline(args.out, args.scale, args.pretrain, args.pairs, args.seed, args.device)
    print(f"\nreport: {args.out / 'report.json'}, plots: {args.out / 'ppo_training.png'}, {args.out / 'behaviour.png'}")
    for stage in ("sft", "ppo"):
        _summary(stage, {k: v for k, v in report[stage].items() if k in SUMMARY_KEYS})
    _summary("seconds per stage", report["stage_seconds"])
    return report


SUMMARY_KEYS = ("mean_score", "flawed_rate", "refusal_rate_harmful", "over_refusal_rate", "arithmetic_accuracy",
                "fact_accuracy", "win_rate", "final_kl")


def cmd_evaluate(args) -> dict:
    from rlhf_lab.evaluate import behaviour_metrics, eval_config, eval_prompts, versus
    from rlhf_lab.pipeline_beyond import sample_and_judge_output

    scale = get_scale(args.scale)
    device = pick_device(args.device)
    cfg = eval_config(scale, seed=args.seed + 1234)
    prompts = eval_prompts(cfg, args.prompts)
    # A policy checkpoint, or a best-of-n folder (answers with best-of-n sampling).
    frame = sample_and_judge_output(args.policy, prompts, cfg, device)
    result = behaviour_metrics(frame)
    if args.versus:
        other = sample_and_judge_output(args.versus, prompts, cfg, device)
        result = {**result, **versus(frame, other), "versus": {**behaviour_metrics(other), "policy": str(args.versus)}}
    if args.samples:
        frame.to_csv(args.samples, index=False)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _summary(f"{args.policy} on {len(prompts)} held-out prompts", {k: v for k, v in result.items() if k != "versus"})
        if args.versus:
            _summary(f"{args.versus} (the opponent)", result["versus"])
    return result


def cmd_colab(args) -> list[str]:
    """Regenerate the Colab badge and install cell of every lesson from `colab.REPOSITORY`."""
    from rlhf_lab import colab
    from rlhf_lab.config import REPO_DIR

    notebooks = sorted((REPO_DIR / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    changed = [str(path.relative_to(REPO_DIR)) for path in notebooks if colab.write_notebook_cells(path)]
    if colab.write_readme_badges(REPO_DIR / "README.md", notebooks):
        changed.append("README.md")
    print(f"Colab badges for {colab.repository_url()}: " + (", ".join(changed) + " updated" if changed else "all up to date"))
    return changed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("data", help="regenerate the world's corpora (deterministic from --seed)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: data/world)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_data)

    p = commands.add_parser("pretrain", help="train the base model from scratch")
    _common(p)
    p.add_argument("--preset", default=None, help="policy size: nano, tiny or small (default: by scale)")
    p.add_argument("--data", type=Path, default=None, help="prompt/completion JSONL (default: data/world/pretrain.jsonl)")
    p.add_argument("--steps", type=int, default=None, help="override the scale's number of steps")
    p.set_defaults(run=lambda args: cmd_train_lm(args, "pretrain"))

    p = commands.add_parser("sft", help="supervised fine-tuning on demonstrations")
    _common(p)
    p.add_argument("--policy", type=Path, required=True, help="the policy to fine-tune (e.g. data/checkpoints/base)")
    p.add_argument("--data", type=Path, default=None, help="prompt/completion JSONL (default: data/world/sft.jsonl)")
    p.add_argument("--steps", type=int, default=None, help="override the scale's number of steps")
    p.set_defaults(run=lambda args: cmd_train_lm(args, "sft"))

    p = commands.add_parser("label", help="label answer pairs with the simulated human (appends to a store)")
    p.add_argument("--simulate", type=int, required=True, metavar="N", help="number of labelled pairs to add")
    p.add_argument("--policy", type=Path, required=True, help="the policy whose answers are compared (SFT)")
    p.add_argument("--out", type=Path, required=True, help="preference store (JSONL, appended to)")
    p.add_argument("--k", type=int, default=4, help="answers sampled per prompt (all C(K,2) pairs are labelled)")
    p.add_argument("--prompts", type=Path, default=None, help="prompt JSONL (default: data/world/prompts.jsonl)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_label)

    p = commands.add_parser("reward", help="train a Bradley-Terry reward model on a preference file")
    _common(p)
    p.add_argument("--prefs", type=Path, required=True, help="preference store (JSONL)")
    p.add_argument("--policy", type=Path, default=None, help="SFT policy to start from (default: the newest sft)")
    p.set_defaults(run=cmd_reward)

    p = commands.add_parser("ppo", help="PPO with a KL penalty against a reward model")
    _common(p)
    p.add_argument("--policy", type=Path, default=None, help="SFT policy (default: the newest sft)")
    p.add_argument("--reward", type=Path, default=None, help="reward model (default: the newest reward)")
    p.add_argument("--iterations", type=int, default=None, help="override the scale's number of iterations")
    p.add_argument("--beta", type=float, default=None, help="initial KL coefficient (default: PPOConfig.beta)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.set_defaults(run=cmd_ppo)

    p = commands.add_parser("pipeline", help="every stage end to end, with a report")
    _common(p)
    p.add_argument("--pretrain", action="store_true", help="pretrain a base model too (default: the shipped base)")
    p.add_argument("--pairs", type=int, default=None, help="simulated preference pairs (default: by scale)")
    p.set_defaults(run=cmd_pipeline)

    p = commands.add_parser("evaluate", help="behaviour figures by the simulated human")
    _common(p, out=False)
    p.add_argument("--policy", type=Path, required=True)
    p.add_argument("--versus", type=Path, default=None, help="a second policy for a head-to-head")
    p.add_argument("--prompts", type=Path, default=None, help="prompt JSONL (default: data/world/eval_prompts.jsonl)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--samples", type=Path, default=None, help="also write every judged answer to this CSV")
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("colab", help="write the Open-in-Colab badge and install cell into every lesson and the README")
    p.set_defaults(run=cmd_colab)

    from rlhf_lab.cli_beyond import add_commands

    add_commands(commands)  # dpo, best-of-n, rloo, grpo, sweep
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, ValueError) as error:  # bad input: one clear line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
