"""The command line the lessons and the tests share: `python -m rlhf_lab <command> --help` (or `rlhf-lab`).

    data       regenerate the world's corpora under data/world
    pretrain   train the base model from scratch on the pretraining mix
    sft        fine-tune a policy on the demonstrations
    label      sample answers from a policy and label pairs with the simulated human
    reward     train a reward model on a preference file
    ppo        PPO with a KL penalty against a reward model
    pipeline   every stage end to end (SFT -> labels -> reward model -> PPO -> report)
    evaluate   behaviour figures of a policy (and, with --versus, a head-to-head)
    dpo        DPO on a preference file (no reward model, no sampling)
    best-of-n  answer with the best of n samples by the reward model (trains nothing)
    rloo       RLOO: policy gradient with a leave-one-out group baseline
    grpo       GRPO: policy gradient with a standardised group baseline
    sweep      lesson 06 from the shell: β sweep (KL frontier), weak-leash run, adaptive KL

Every training command takes --scale {ci,laptop,gpu}, --seed, --device and --out DIR, shows
progress, saves a safetensors checkpoint with `history.csv` and `metrics.json` beside it, and ends
with a summary. `--set FIELD=VALUE` sets any field of the command's config dataclass
(`--settings` lists them with this scale's values). Arguments are checked before any model is
loaded: a bad one gets a one-line error and exit code 2.

Maintainers' commands (rewriting the repository's notebooks) are apart: `python -m rlhf_lab.maintain`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from pathlib import Path

from rlhf_lab import __version__
from rlhf_lab.config import SCALES, get_scale

# Which config dataclass `--set` writes to, per command: (module, preset function, class name).
CONFIGS = {
    "pretrain": ("rlhf_lab.sft", "pretrain_config"), "sft": ("rlhf_lab.sft", "sft_config"),
    "reward": ("rlhf_lab.reward", "reward_config"), "ppo": ("rlhf_lab.ppo", "ppo_config"),
    "dpo": ("rlhf_lab.dpo", "dpo_config"), "rloo": ("rlhf_lab.rloo_grpo", "group_config"),
    "grpo": ("rlhf_lab.rloo_grpo", "group_config"), "best-of-n": ("rlhf_lab.best_of_n", "best_of_n_config"),
    "sweep": ("rlhf_lab.reward_hacking", "sweep_config"), "pipeline": ("rlhf_lab.stages", "pipeline_config"),
    "evaluate": ("rlhf_lab.evaluate", "eval_config"),
}
SUMMARY_KEYS = ("mean_score", "flawed_rate", "refusal_rate_harmful", "over_refusal_rate", "arithmetic_accuracy",
                "fact_accuracy", "win_rate", "final_kl")


class UserError(Exception):
    """A mistake in the command line or its files: reported in one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----- argument types: each checks one kind of value and says what is wrong with it -----


def count(text: str) -> int:
    """A whole number >= 1 (steps, iterations, pairs, n)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite(text: str) -> float:
    """A finite number >= 0 (β, learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def existing_file(text: str) -> Path:
    return _existing(text, "file", Path.is_file, "is a folder, expected a file")


def _existing(text: str, kind: str, is_kind, otherwise: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path}: no such {kind}")
    if not is_kind(path):
        raise argparse.ArgumentTypeError(f"{path} {otherwise}")
    return path


def checkpoint_folder(text: str) -> Path:
    from rlhf_lab.checkpoints import recover

    recover(text)  # a save a crash interrupted between its two renames is finished first
    path = _existing(text, "checkpoint folder", Path.is_dir, "is a file, expected a checkpoint folder")
    if not (path / "config.json").is_file() and not (path / "best_of_n.json").is_file():
        raise argparse.ArgumentTypeError(f"{path} is not a checkpoint (it has no config.json)")
    return path


def output_folder(text: str) -> Path:
    """A folder we can create or write into (not an existing file, not under a read-only folder)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; --out needs a folder")
    existing = next(parent for parent in [path, *path.absolute().parents] if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write into {existing} (to create {path})")
    return path


def run_folder(text: str) -> Path:
    """An output folder a stage may replace whole: new, empty, or a previous run's."""
    from rlhf_lab.checkpoints import check_replaceable

    path = output_folder(text)
    try:
        check_replaceable(path)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return path


def output_file(text: str) -> Path:
    """A file we can create or append to."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; expected a file")
    output_folder(str(path.parent) if str(path.parent) else ".")
    return path


def setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    return name.strip(), value.strip()


# ----- the parser -----


def _common(parser: argparse.ArgumentParser, out: str | None = "output folder") -> None:
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help="preset sizes and steps (default: $RLHF_LAB_SCALE, else gpu on CUDA, else laptop)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: $RLHF_LAB_DEVICE, else the best available)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed repeats a CPU run exactly")
    if out:  # a stage's output replaces the folder; the pipeline's holds one folder per stage
        folder = output_folder if parser.prog.endswith("pipeline") else run_folder
        parser.add_argument("--out", required=True, type=folder, help=out)


def _config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    config = CONFIGS[command][1].replace("_config", "").replace("_", " ")
    parser.add_argument("--set", dest="settings", type=setting, action="append", default=[], metavar="FIELD=VALUE",
                        help=f"set any field of the {config} config (repeatable; --settings lists them)")
    parser.add_argument("--settings", dest="list_settings", action="store_true",
                        help="print every config field with its value at this scale, and exit")


def _policy(parser: argparse.ArgumentParser, reward: bool = False, required: bool = False) -> None:
    parser.add_argument("--policy", type=checkpoint_folder, default=None, required=required,
                        help="policy checkpoint to start from" + ("" if required else " (default: the newest sft)"))
    if reward:
        parser.add_argument("--reward", type=checkpoint_folder, default=None,
                            help="reward model checkpoint (default: the newest reward)")


def _add(commands, name: str, help_text: str, out: str | None = "output folder") -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help_text, description=help_text)
    _common(parser, out)
    if name in CONFIGS:
        _config_flags(parser, name)
    return parser


def _training_commands(commands) -> None:
    p = _add(commands, "pretrain", "train the base model from scratch")
    p.add_argument("--preset", choices=("nano", "tiny", "small"), default=None, help="policy size (default: by scale)")
    p.add_argument("--data", type=existing_file, default=None, help="prompt/completion JSONL (default: pretrain.jsonl)")
    p.add_argument("--steps", type=count, default=None, help="training steps (default: the scale's)")
    p = _add(commands, "sft", "supervised fine-tuning on demonstrations")
    _policy(p)
    p.add_argument("--data", type=existing_file, default=None, help="prompt/completion JSONL (default: sft.jsonl)")
    p.add_argument("--steps", type=count, default=None, help="training steps (default: the scale's)")
    p = _add(commands, "label", "label answer pairs with the simulated human (appends to a store)", out=None)
    p.add_argument("--simulate", type=count, required=True, metavar="N", help="number of labelled pairs to add")
    _policy(p, required=True)
    p.add_argument("--out", type=output_file, required=True, help="preference store (JSONL, appended to)")
    p.add_argument("--k", type=count, default=4, help="answers sampled per prompt (all C(K,2) pairs are labelled)")
    p.add_argument("--prompts", type=existing_file, default=None, help="prompt JSONL (default: prompts.jsonl)")
    p = _add(commands, "reward", "train a Bradley-Terry reward model on a preference file")
    p.add_argument("--prefs", type=existing_file, required=True, help="preference store (JSONL)")
    _policy(p)
    p = _add(commands, "ppo", "PPO with a KL penalty against a reward model")
    _policy(p, reward=True)
    p.add_argument("--iterations", type=count, default=None, help="rollout + update rounds (default: the scale's)")
    p.add_argument("--beta", type=finite, default=None, help="initial KL coefficient β (default: PPOConfig.beta)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p = _add(commands, "pipeline", "every stage end to end, with a report")
    p.add_argument("--pretrain", action="store_true", help="pretrain a base model too (default: the shipped base)")


def _beyond_commands(commands) -> None:
    p = _add(commands, "dpo", "DPO on a preference file (no reward model, no sampling)")
    _policy(p)
    p.add_argument("--prefs", type=existing_file, default=None,
                   help="preference store (JSONL; default: the one the newest reward model learned from)")
    p.add_argument("--beta", type=finite, default=None, help="DPO's β (default: the scale's)")
    p.add_argument("--epochs", type=count, default=None, help="passes over the pairs (default: the scale's)")
    p.add_argument("--lr", type=finite, default=None, help="learning rate (default: the scale's)")
    p = _add(commands, "best-of-n", "answer with the best of n samples by the reward model (trains nothing)")
    _policy(p, reward=True)
    p.add_argument("--n", type=count, default=None, help="candidates per prompt (default: the scale's)")
    for method in ("rloo", "grpo"):
        p = _add(commands, method, f"{method.upper()}: policy gradient with a group baseline, against the reward model")
        _policy(p, reward=True)
        p.add_argument("--iterations", type=count, default=None, help="rollout + update rounds (default: the scale's)")
        p.add_argument("--beta", type=finite, default=None, help="KL coefficient (default: the scale's)")
        p.add_argument("--k", type=count, default=None, help="answers sampled per prompt (the group size)")
    p = _add(commands, "sweep", "lesson 06: β sweep (KL frontier), weak-leash run, adaptive KL")
    _policy(p, reward=True)
    p.add_argument("--betas", type=finite, nargs="+", default=None, help="fixed β values (default: the scale's)")
    p.add_argument("--iterations", type=count, default=None, help="PPO iterations per β")
    p.add_argument("--leash-iterations", type=count, default=None, help="iterations of the weak-leash run")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m rlhf_lab", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rlhf-lab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = commands.add_parser("data", help="regenerate the world's corpora (deterministic from --seed)",
                            description="regenerate the world's corpora (deterministic from --seed)")
    p.add_argument("--out", type=output_folder, default=None, help="output folder (default: data/world)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the world's generator")
    _training_commands(commands)
    p = _add(commands, "evaluate", "behaviour figures by the simulated human", out=None)
    p.add_argument("--policy", type=checkpoint_folder, required=True, help="policy (or best-of-n) folder to evaluate")
    p.add_argument("--versus", type=checkpoint_folder, default=None, help="a second policy for a head-to-head")
    p.add_argument("--prompts", type=existing_file, default=None, help="prompt JSONL (default: eval_prompts.jsonl)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--samples", type=output_file, default=None, help="also write every judged answer to this CSV")
    _beyond_commands(commands)
    return parser


# ----- from arguments to a stage call -----

# Named flags that are config fields, as (flag attribute, config field).
FIELD_FLAGS = {"steps": "steps", "iterations": "iterations", "beta": "beta", "epochs": "epochs", "lr": "lr",
               "n": "n", "betas": "betas", "leash_iterations": "leash_iterations"}


def _convert(name: str, value: str, current):
    """VALUE of `--set` as the type of the field's current value."""
    if current is None:  # an optional setting (e.g. GroupConfig.kl_in): taken as written
        return value
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(type(current[0])(item) for item in value.split(",")) if current else tuple(value.split(","))
        converted = type(current)(value)
    except (ValueError, TypeError, IndexError):
        raise UserError(f"--set {name}={value}: expected {type(current).__name__}") from None
    if isinstance(converted, float) and not math.isfinite(converted):
        raise UserError(f"--set {name}={value}: must be a finite number")
    return converted


def config_overrides(args) -> dict:
    """The config fields a command line sets: named flags first, then every `--set FIELD=VALUE`."""
    if args.command not in CONFIGS:
        return {}
    import importlib

    module, function = CONFIGS[args.command]
    make_config = getattr(importlib.import_module(module), function)
    default = make_config(scale=args.scale) if args.command not in ("rloo", "grpo") else \
        make_config(args.command, scale=args.scale)
    known = {field.name: getattr(default, field.name) for field in fields(default)}
    overrides = {field: getattr(args, flag) for flag, field in FIELD_FLAGS.items()
                 if getattr(args, flag, None) is not None and field in known}
    if getattr(args, "k", None) is not None and "group_size" in known:
        overrides["group_size"] = args.k
    for name, value in args.settings:
        if name not in known:
            raise UserError(f"--set {name}: {type(default).__name__} has no field {name!r}; "
                            f"fields: {', '.join(sorted(known))}")
        overrides[name] = _convert(name, value, known[name])
    if "betas" in overrides:
        overrides["betas"] = tuple(overrides["betas"])
    if args.list_settings:
        for name, value in known.items():
            print(f"  {name:24s} {overrides.get(name, value)!r}")
        raise SystemExit(0)
    return overrides


def check_device(name: str | None) -> None:
    """Refuse a device this machine does not have, before anything is loaded."""
    import torch

    from rlhf_lab.config import pick_device

    try:
        device = pick_device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU (try --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"--device {name}: MPS is not available on this machine (try --device cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: expected cpu, cuda, cuda:N or mps")


def _summary(title: str, metrics: dict) -> None:
    print(f"\n{title}")
    for key, value in metrics.items():
        if isinstance(value, (dict, list)):
            continue
        print(f"  {key:26s} {value:.3f}" if isinstance(value, float) else f"  {key:26s} {value}")


def _common_kwargs(args) -> dict:
    return dict(scale=args.scale, seed=args.seed, device=args.device)


def run_data(args, overrides: dict) -> dict:
    from rlhf_lab.data import CorpusConfig, generate_corpora

    paths = generate_corpora(args.out, CorpusConfig(seed=args.seed))
    for name, path in paths.items():
        print(f"  {name:14s} {path}")
    return {name: str(path) for name, path in paths.items()}


def _run_stage(args, overrides: dict, stage_function: str, **inputs) -> dict:
    """Run `stages.<stage_function>` with the command's inputs, common options and config overrides."""
    from rlhf_lab import stages

    metrics = getattr(stages, stage_function)(args.out, **inputs, **_common_kwargs(args), **overrides)
    seconds = metrics.get("train_seconds", metrics.get("sample_seconds", metrics.get("seconds", 0.0)))
    _summary(f"{args.command} done in {seconds:.0f} s -> {args.out}", metrics)
    return metrics


def run_train_lm(args, overrides: dict) -> dict:
    return _run_stage(args, overrides, "train_lm_stage", stage=args.command, policy_dir=getattr(args, "policy", None),
                      data_path=args.data, preset=getattr(args, "preset", None))


def run_label(args, overrides: dict) -> dict:
    from rlhf_lab.preferences import check_preference_file
    from rlhf_lab.stages import label_stage

    check_preference_file(args.out)  # never append labels to a file of something else
    result = label_stage(args.out, policy_dir=args.policy, n_pairs=args.simulate, k=args.k, prompts_path=args.prompts,
                         seed=args.seed, device=args.device)
    _summary(f"{result['written']} simulated labels appended to {args.out}", result)
    return result


def run_reward(args, overrides: dict) -> dict:
    return _run_stage(args, overrides, "reward_stage", prefs_path=args.prefs, policy_dir=args.policy)


def run_ppo(args, overrides: dict) -> dict:
    return _run_stage(args, overrides, "ppo_stage", policy_dir=args.policy, reward_dir=args.reward, resume=args.resume)


def run_pipeline(args, overrides: dict) -> dict:
    from rlhf_lab.stages import run_pipeline as pipeline

    report = pipeline(args.out, pretrain=args.pretrain, **_common_kwargs(args), **overrides)
    print(f"\nreport: {args.out / 'report.json'}, plots: {args.out / 'ppo_training.png'}, {args.out / 'behaviour.png'}")
    for stage in ("sft", "ppo"):
        _summary(stage, {k: v for k, v in report[stage].items() if k in SUMMARY_KEYS})
    _summary("seconds per stage", report["stage_seconds"])
    return report


def run_evaluate(args, overrides: dict) -> dict:
    from rlhf_lab.evaluate import behaviour_metrics, eval_config, heldout_prompts, versus
    from rlhf_lab.stages import measure_output

    cfg = eval_config(get_scale(args.scale), **{"seed": 1234 + args.seed, **overrides})
    prompts, families = heldout_prompts(cfg, args.prompts)
    # A policy checkpoint, or a best-of-n folder (answers with best-of-n sampling).
    frame = measure_output(args.policy, prompts, families, cfg, args.device)
    result = behaviour_metrics(frame)
    if args.versus:
        other = measure_output(args.versus, prompts, families, cfg, args.device)
        result = {**result, **versus(frame, other), "versus": {**behaviour_metrics(other), "policy": str(args.versus)}}
    if args.samples:
        frame.to_csv(args.samples, index=False)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _summary(f"{args.policy} on {len(prompts)} held-out prompts", result)
        if args.versus:
            _summary(f"{args.versus} (the opponent)", result["versus"])
    return result


def run_dpo(args, overrides: dict) -> dict:
    return _run_stage(args, overrides, "dpo_stage", policy_dir=args.policy, prefs_path=args.prefs)


def run_group(args, overrides: dict) -> dict:
    return _run_stage(args, overrides, "group_stage", method=args.command, policy_dir=args.policy,
                      reward_dir=args.reward)


def run_best_of_n(args, overrides: dict) -> dict:
    metrics = _run_stage(args, overrides, "best_of_n_stage", policy_dir=args.policy, reward_dir=args.reward)
    print(f"every n' <= n: {args.out / 'history.csv'}")
    return metrics


def run_sweep(args, overrides: dict) -> dict:
    from rlhf_lab.stages import sweep_stage

    metrics = sweep_stage(args.out, policy_dir=args.policy, reward_dir=args.reward, **_common_kwargs(args), **overrides)
    print(f"\nfrontier ({args.out / 'frontier.csv'}):")
    for row in metrics["frontier"]:
        print(f"  β={row['beta']:<6g} reward {row['reward']:+.2f}  true {row['true_score']:.2f}  KL {row['kl']:.2f}")
    _summary(f"sweep done in {metrics['seconds']:.0f} s -> {args.out} (plots: frontier.png, "
             "overoptimisation.png, adaptive_kl.png)", metrics)
    return metrics


RUN = {"data": run_data, "pretrain": run_train_lm, "sft": run_train_lm, "label": run_label, "reward": run_reward,
       "ppo": run_ppo, "pipeline": run_pipeline, "evaluate": run_evaluate, "dpo": run_dpo, "best-of-n": run_best_of_n,
       "rloo": run_group, "grpo": run_group, "sweep": run_sweep}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if "scale" in args:
            get_scale(args.scale)  # a bad $RLHF_LAB_SCALE is a user error too
        overrides = config_overrides(args)
        if getattr(args, "device", None) is not None:
            check_device(args.device)
        RUN[args.command](args, overrides)
    except (UserError, FileNotFoundError, ValueError) as error:  # bad input: one clear line, no traceback
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (OSError, FloatingPointError) as error:  # a full disk, a NaN: one line that says what was kept
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0
