"""Command-line sub-commands beyond PPO, registered on `python -m rlhf_lab` by `add_commands`.

    dpo        DPO on a preference file            --prefs FILE
    best-of-n  best-of-n sampling with the RM      --reward DIR --n N
    rloo       RLOO against the reward model       --reward DIR
    grpo       GRPO against the reward model       --reward DIR
    sweep      lesson 06 from the shell: PPO at several fixed β (the frontier), a long weak-leash
               run (over-optimisation) and the adaptive KL controller, with CSVs and plots

Same conventions as `ppo`: --scale {ci,laptop,gpu}, --policy DIR (default: the newest SFT),
--out DIR; each writes metrics.json and history.csv, and `evaluate --policy DIR` reads the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _print_summary(title: str, metrics: dict) -> None:
    from rlhf_lab.cli import _summary

    _summary(title, {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})


def cmd_dpo(args) -> dict:
    from rlhf_lab.pipeline_beyond import dpo_stage

    overrides = {name: value for name, value in (("beta", args.beta), ("epochs", args.epochs), ("lr", args.lr))
                 if value is not None}
    metrics = dpo_stage(args.out, args.scale, args.policy, args.prefs, args.seed, args.device, **overrides)
    _print_summary(f"DPO done in {metrics['train_seconds']:.0f} s -> {args.out}", metrics)
    return metrics


def cmd_group(args, method: str) -> dict:
    from rlhf_lab.pipeline_beyond import group_stage

    overrides = {name: value for name, value in (("iterations", args.iterations), ("beta", args.beta),
                                                 ("group_size", args.k)) if value is not None}
    metrics = group_stage(method, args.out, args.scale, args.policy, args.reward, args.seed, args.device, **overrides)
    _print_summary(f"{method.upper()} done in {metrics['train_seconds']:.0f} s -> {args.out}", metrics)
    return metrics


def cmd_best_of_n(args) -> dict:
    from rlhf_lab.pipeline_beyond import best_of_n_stage

    metrics = best_of_n_stage(args.out, args.scale, args.policy, args.reward, args.n, args.seed, args.device)
    _print_summary(f"best-of-{metrics['n']} done in {metrics['sample_seconds']:.0f} s -> {args.out} "
                   f"(every n' <= n in {args.out / 'history.csv'})", metrics)
    return metrics


def cmd_sweep(args) -> dict:
    from rlhf_lab.pipeline_beyond import sweep_stage

    overrides = {name: value for name, value in (("betas", tuple(args.betas) if args.betas else None),
                                                 ("iterations", args.iterations),
                                                 ("leash_iterations", args.leash_iterations)) if value is not None}
    metrics = sweep_stage(args.out, args.scale, args.policy, args.reward, args.seed, args.device, **overrides)
    print(f"\nfrontier ({args.out / 'frontier.csv'}):")
    for row in metrics["frontier"]:
        print(f"  β={row['beta']:<6g} reward {row['reward']:+.2f}  true {row['true_score']:.2f}  KL {row['kl']:.2f}")
    _print_summary(f"sweep done in {metrics['seconds']:.0f} s -> {args.out} (plots: frontier.png, "
                   "overoptimisation.png, adaptive_kl.png)", metrics)
    return metrics


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register dpo, best-of-n, rloo, grpo and sweep on the `python -m rlhf_lab` sub-parsers."""
    from rlhf_lab.cli import _common

    def policy_and_reward(p: argparse.ArgumentParser, reward: bool = True) -> None:
        p.add_argument("--policy", type=Path, default=None,
                       help="SFT policy, also the reference (default: the newest sft)")
        if reward:
            p.add_argument("--reward", type=Path, default=None, help="reward model (default: the newest reward)")

    p = commands.add_parser("dpo", help="DPO on a preference file (no reward model, no sampling)")
    _common(p)
    policy_and_reward(p, reward=False)
    p.add_argument("--prefs", type=Path, required=True,
                   help="preference store (JSONL), e.g. data/world/preferences.jsonl")
    p.add_argument("--beta", type=float, default=None, help="DPO's β (default: the scale's)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the pairs (default: the scale's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the scale's)")
    p.set_defaults(run=cmd_dpo)

    p = commands.add_parser("best-of-n", help="answer with the best of n samples by the reward model (trains nothing)")
    _common(p)
    policy_and_reward(p)
    p.add_argument("--n", type=int, default=None, help="candidates per prompt (default: the scale's)")
    p.set_defaults(run=cmd_best_of_n)

    for method in ("rloo", "grpo"):
        p = commands.add_parser(method, help=f"{method.upper()}: policy gradient with a group baseline, "
                                             "against the reward model")
        _common(p)
        policy_and_reward(p)
        p.add_argument("--iterations", type=int, default=None, help="override the scale's number of iterations")
        p.add_argument("--beta", type=float, default=None, help="KL coefficient (default: the scale's)")
        p.add_argument("--k", type=int, default=None, help="answers sampled per prompt (the group size)")
        p.set_defaults(run=lambda args, method=method: cmd_group(args, method))

    p = commands.add_parser("sweep", help="lesson 06: β sweep (KL frontier), weak-leash run, adaptive KL")
    _common(p)
    policy_and_reward(p)
    p.add_argument("--betas", type=float, nargs="+", default=None, help="fixed β values (default: the scale's)")
    p.add_argument("--iterations", type=int, default=None, help="PPO iterations per β")
    p.add_argument("--leash-iterations", type=int, default=None, help="iterations of the weak-leash run")
    p.set_defaults(run=cmd_sweep)
