"""DPO with TRL on the course's preference data, on as many processes as `accelerate launch` starts.

    accelerate launch --multi_gpu --num_processes 4 examples/dpo_accelerate.py --out runs/dpo-ddp  # 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 examples/dpo_accelerate.py --out runs/dpo-ddp  # CPU only

`--multi_gpu` picks accelerate's multi-process launcher (torchrun). On a machine without a GPU the
same command starts CPU processes: the script then asks for the CPU (`use_cpu`) and the processes
talk over gloo instead of NCCL. (`--cpu --num_processes 2` would start a single process: accelerate
runs several CPU processes only through MPI.)

Data parallelism, the simplest way to use several devices: every process holds a full copy of the
policy (and of the frozen reference), reads its own share of every batch, and before each optimizer
step the gradients are averaged across processes (DistributedDataParallel). So every copy takes the
same step and the copies stay identical; N processes see N times the data per step.

Nothing below knows how many processes there are: `accelerate launch` starts them and sets the
environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), and TRL's trainer (a transformers Trainer, built
on accelerate) reads it, splits the data and wraps the model. The same script runs unchanged as
`python examples/dpo_accelerate.py` on one process.

Each process writes `rank{N}.json` into --out: which process it was, how many steps it took, and a
checksum of its weights before and after (equal on every process if the gradients really were
averaged). Process 0 also saves the trained policy to `--out/policy`. Needs the optional extra:
`pip install -e ".[trl]"`.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from rlhf_lab import data
from rlhf_lab.config import find_checkpoint
from rlhf_lab.policy import load_policy, save_policy
from rlhf_lab.preferences import PreferenceStore
from rlhf_lab.reward import pairs_from_records

# transformers 5 renamed gradient checkpointing to "activation checkpointing"; TRL 1.16 still sets
# the old name, which only earns a FutureWarning per process.
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing` is deprecated", category=FutureWarning)


def conversation_pairs(path: str | Path, max_pairs: int = 0) -> Dataset:
    """Preference records as TRL's conversational preference rows (prompt / chosen / rejected).

    As messages, TRL renders them with the tokenizer's chat template, which gives exactly our
    `<|user|> question <|assistant|> answer <|end|>` layout. Ties and identical answers are dropped,
    as for our own reward model and DPO.
    """
    pairs = pairs_from_records(PreferenceStore(path).records, learner_weight=1.0)
    if not pairs:
        raise ValueError(f"{path}: no usable preference pairs (every record is a tie or the file is empty)")
    if max_pairs:
        pairs = pairs[:max_pairs]
    return Dataset.from_list([{"prompt": [{"role": "user", "content": pair["prompt"]}],
                               "chosen": [{"role": "assistant", "content": pair["chosen"]}],
                               "rejected": [{"role": "assistant", "content": pair["rejected"]}]} for pair in pairs])


def weight_checksum(model: torch.nn.Module) -> float:
    """Sum of all weights (in float64): the same on every process if their copies are in sync."""
    return float(sum(parameter.detach().double().sum().item() for parameter in model.parameters()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for rank{N}.json and the trained policy")
    parser.add_argument("--policy", type=Path, default=None,
                        help="starting policy and reference (default: the SFT checkpoint)")
    parser.add_argument("--prefs", type=Path, default=None,
                        help="preference file (default: data/world/preferences.jsonl)")
    parser.add_argument("--max-steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--max-pairs", type=int, default=0, help="use only the first N pairs (0: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per process per step")
    parser.add_argument("--beta", type=float, default=0.5, help="DPO's β (our DPOConfig's default)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    policy_dir = args.policy or find_checkpoint("sft")
    policy, tokenizer = load_policy(policy_dir)  # every process loads its own full copy
    reference, _ = load_policy(policy_dir)
    start_checksum = weight_checksum(policy)
    on_gpu = torch.cuda.is_available()
    config = DPOConfig(
        output_dir=str(args.out),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,  # per process: the global batch is N times this
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        beta=args.beta,
        seed=args.seed,
        # TRL's defaults (bf16, gradient checkpointing) suit large models on GPUs; on a CPU they make
        # a tiny model several times slower. Mixed precision only where the hardware has it (not
        # emulated: a T4 "supports" bf16 only by emulation, which is slower than full precision).
        bf16=on_gpu and torch.cuda.is_bf16_supported(including_emulation=False),
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=not on_gpu,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,  # every weight gets a gradient: skip DDP's search for unused ones
    )
    trainer = DPOTrainer(model=policy, ref_model=reference, args=config,
                         train_dataset=conversation_pairs(args.prefs or data.world_file("preferences"), args.max_pairs),
                         processing_class=tokenizer)
    # The data each process reads: the trainer's dataloader gives every process its own share.
    first_batch = next(iter(trainer.get_train_dataloader()))
    trainer.train()

    accelerator = trainer.accelerator
    trained = accelerator.unwrap_model(trainer.model)
    report = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "steps": trainer.state.global_step,
        "pairs_per_step": args.batch_size * accelerator.num_processes,
        "start_checksum": start_checksum,
        "end_checksum": weight_checksum(trained),
        "first_example": tokenizer.decode(first_batch["input_ids"][0], skip_special_tokens=True),
        # Logged losses are already averaged over the processes, so every rank logs the same numbers.
        "losses": [row["loss"] for row in trainer.state.log_history if "loss" in row],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{report['rank']}.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"rank {report['rank']} of {report['world_size']} on {report['device']}: {report['steps']} steps, "
          f"last loss {report['losses'][-1]:.4f}, weight checksum {report['end_checksum']:.6f}", flush=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # the copies are identical: one process saves
        save_policy(trained, tokenizer, args.out / "policy")


if __name__ == "__main__":
    main()
