"""Our trainers against TRL's, side by side: the same model, examples, batches and lengths. Who trains faster?

    python benchmarks/bench_vs_trl.py                          # every stage, 5 paired repetitions (several minutes)
    python benchmarks/bench_vs_trl.py --quick                  # about a minute: few steps, one repetition (the test)
    python benchmarks/bench_vs_trl.py --stages dpo,ppo --reps 9 --json runs/bench_vs_trl.json
    python benchmarks/bench_vs_trl.py --threads 1 --cpu-time   # on a busy machine: CPU seconds, not wall seconds

Needs the `trl` extra (`pip install -e ".[trl]"`). Runs on the CPU, in float32, without gradient checkpointing.

| stage  | ours                                    | TRL                                           | unit             |
|--------|-----------------------------------------|-----------------------------------------------|------------------|
| sft    | sft.train_language_model (masked)       | SFTTrainer(completion_only_loss=True)         | non-pad tokens/s |
| reward | reward.train_reward_model (BT)          | RewardTrainer, GPT2 sequence classifier       | pairs/s          |
| dpo    | dpo.train_dpo (ref. first)              | DPOTrainer(precompute_ref_log_probs=True)     | pairs/s          |
| ppo    | ppo.PPOTrainer, 64 episodes, 16 updates | RLOOTrainer, 64 episodes (16 x 4), 16 updates | episodes/s       |
| rloo   | GroupTrainer, 64 (16 x 4), 8 updates    | RLOOTrainer, 64 episodes (16 x 4), 8 updates  | episodes/s       |

What is held equal. Both sides start from the shipped nano SFT checkpoint (`data/checkpoints/sft`); the RL stages
score with the shipped reward model (`data/checkpoints/reward`, through a reward function on TRL's side). SFT, reward
model and DPO see the same examples in the same batches: the benchmark computes the batches our trainer draws (same
functions, same seed) and hands TRL the examples in that order with a sequential sampler. The reward and DPO trainers
batch whole labelling items (of varying size); here every pair is its own item, so every batch holds exactly
`batch_size` pairs on both sides. Our trainers score each distinct answer of a batch once (the pairs of one labelling
item share their answers), so the benchmark uses only pairs that share no answer with another: both sides then run
the same rows. The RL stages give TRL the prompts our trainer drew, in its order. Batch sizes,
answer lengths (`max_new_tokens`), temperature and the shape of each rollout (episodes, updates per rollout,
minibatch size) are the same.

How it is measured, the same instrument on both sides (`WorkMeter`): a global optimizer post-step hook time-stamps
every step of the optimizer that trains the policy (or the reward model), and forward pre-hooks on every network's
transformer count what it was given -- with gradients (training): rows, non-pad tokens and padded positions; without
(scoring): non-pad tokens; and one-column passes (the decode steps of generation). The first `warmup` steps (RL:
iterations) are left out: the timed window runs from the stamp of the last warm-up step to the last stamp. Each
repetition builds fresh trainers, ours then TRL's, so a change in the machine's load hits both alike; the table
gives the median of each side and the median and range of the paired ratios ours / TRL (above 1: ours is faster).

Differences that cannot be removed (each trainer's own way of doing a step is what is being compared):
- Padding: ours left-pads and passes position ids; TRL right-pads. The real tokens are the same. Our reward and DPO
  trainers run a step's rows in passes of rows of similar length (`pass_overhead`), so they pad less than TRL's one
  pass per step; in DPO a pass's layout (prompt block, then answer block) is as wide as its longest prompt plus its
  longest answer. The padded positions per step are reported.
- Optimizers: each trainer's own (ours: torch's fused Adam/AdamW where it has one, as on this CPU with torch >= 2.4;
  TRL: transformers' default, fused AdamW on torch >= 2.8). Bookkeeping too: TRL's per-step metrics (entropy, token
  accuracy, rewards), ours' history rows.
- Log-probs: TRL's DPO and RLOO run the LM head through TRL's fused, chunked log-prob kernel, which on a CPU scores
  every position; ours runs the LM head on the answer positions only, then a log-softmax. Our SFT loss, too, runs the
  LM head only where a target token is predicted.
- Reward model: ours is the backbone plus a linear head with bias (and a gain and offset); TRL's is
  GPT2ForSequenceClassification (a head without bias). Same backbone, same tokens.
- DPO: our trainer checks held-out pairs and samples a few answers at step 0 and at its last step; that check is
  shrunk to 2 pairs / 2 prompts and falls outside the timed window (at least 2 warm-up steps).
- PPO against RLOO: PPO has a critic -- a second network as large as the policy, run in every rollout and trained
  (forward and backward, its own optimizer) in every update -- and GAE; RLOO has neither. PPO answers 64 prompts
  once, RLOO 16 prompts 4 times each (TRL gets the first 16 of PPO's 64), so their longest answers, which set the
  decode steps and the padding of a rollout, differ for that reason too. The lessons' PPO-ptx term (an SFT
  minibatch in every update) is off here: RLOO has no counterpart.
- RL generation: TRL samples with transformers' `generate` (logits processors, stopping criteria, KV cache); ours
  with its own loop. The two sides draw different random numbers, so their answers differ, and a rollout lasts as
  many decode steps as its longest answer (for the same 64 prompts, the longest answer went from 38 to 61 tokens
  over 12 seeds). Each repetition therefore uses its own seed (0, 1, 2, ...) on both sides, so that this luck
  averages out instead of favouring one side in every repetition; the work table shows the decode steps and the
  longest answer per rollout of both sides.
- TRL decodes the answers to text and its reward function (ours, wrapped) tokenizes them again: TRL's reward
  interface is text. Ours scores the sampled token ids.
- TRL's RLOO recomputes the log-probs of left-padded prompts without position ids (lesson 08): its numbers for
  padded rows are off, the work is the same. Lesson 08 avoids it with one prompt per generation batch; here TRL
  generates all 64 episodes at once, as ours does, so the rollouts have the same shape.
- Our RL trainers judge every rollout with the simulated human for their history (never used for training); TRL
  does not. It counts in our time.

The machine must be quiet: /proc/loadavg is printed at the start, with a warning when other work is running,
because the figures are then unreliable. Where it cannot be, `--threads 1 --cpu-time` times both sides by the CPU
seconds their process used rather than the wall clock, which leaves out the waits for a core (not the slower
memory and caches of a busy machine). Compare only figures from the same machine, thread count and load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import SequentialSampler

try:
    import datasets
    import transformers
    import trl
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, RLOOConfig, RLOOTrainer, SFTConfig, SFTTrainer
except ImportError as error:  # pragma: no cover - depends on the environment
    sys.exit(f"bench_vs_trl.py needs the trl extra ({error}): pip install -e \".[trl]\"")

from rlhf_lab import data, dpo, ppo, reward, rloo_grpo, sft
from rlhf_lab.config import REPO_DIR
from rlhf_lab.policy import load_policy
from rlhf_lab.tokenizer import END

SFT_DIR = REPO_DIR / "data" / "checkpoints" / "sft"
REWARD_DIR = REPO_DIR / "data" / "checkpoints" / "reward"
STAGES = ("sft", "reward", "dpo", "ppo", "rloo")
UNITS = {"sft": "tokens", "reward": "pairs", "dpo": "pairs", "ppo": "episodes", "rloo": "episodes"}
# Steps (SFT, reward, DPO) or iterations (RL) per run, and how many of them are warm-up, left out of the timing.
FULL = {"steps": 30, "warmup_steps": 3, "iterations": 5, "warmup_iterations": 1, "reps": 5}
QUICK = {"steps": 10, "warmup_steps": 2, "iterations": 3, "warmup_iterations": 1, "reps": 2}
# Batch sizes: our laptop presets (SFT) and the mean pairs per step of our reward and DPO trainers on the shipped
# preferences (8 and 6 labelling items per batch).
SFT_BATCH, REWARD_BATCH, DPO_BATCH = 32, 32, 24
EPISODES, GROUP_SIZE, MINIBATCH = 64, 4, 16
UPDATES = {"ppo": 16, "rloo": 8}  # policy updates per 64 episodes: PPO 4 epochs, our RLOO 2, of 4 minibatches
SCRATCH = tempfile.TemporaryDirectory(prefix="bench_vs_trl_")  # TRL's output_dir (nothing is saved); removed at exit


# =====================================================================================
# The instrument: the same hooks on both sides.
# =====================================================================================


def transformer_of(network: torch.nn.Module) -> torch.nn.Module:
    """The GPT-2 transformer inside a policy (`.transformer`) or a reward/value model (`.backbone`)."""
    return getattr(network, "transformer", None) or getattr(network, "backbone", None) or network


class WorkMeter:
    """Time stamps after every optimizer step of `trained`, and the work every network was given between them.

    Counters per network role: `trained_rows`, `trained_tokens` (non-pad) and `trained_positions` (padded) of the
    forward passes run with gradients; `scored_tokens` of full passes without; `decode_passes`, the one-column
    passes of generation. `snapshots[i]` holds the counters at stamp i, so step i's work is a difference.
    """

    def __init__(self, trained: torch.nn.Module, networks: dict[str, torch.nn.Module],
                 clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.tracked = {id(p) for p in trained.parameters()}
        self.networks = networks
        self.counters: dict[str, float] = defaultdict(float)
        self.stamps: list[float] = []
        self.snapshots: list[dict[str, float]] = []
        self.handles: list = []

    def _on_step(self, optimizer, args, kwargs) -> None:
        if any(id(p) in self.tracked for group in optimizer.param_groups for p in group["params"]):
            self.stamps.append(self.clock())
            self.snapshots.append(dict(self.counters))

    def _counter(self, role: str) -> Callable:
        def count(module, args, kwargs) -> None:
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None:
                return
            mask = kwargs.get("attention_mask")
            real = int(mask.sum()) if mask is not None and mask.shape == input_ids.shape else input_ids.numel()
            if torch.is_grad_enabled():
                self.counters[f"{role}.trained_rows"] += input_ids.shape[0]
                self.counters[f"{role}.trained_tokens"] += real
                self.counters[f"{role}.trained_positions"] += input_ids.numel()
            elif input_ids.shape[1] == 1:
                self.counters[f"{role}.decode_passes"] += 1
            else:
                self.counters[f"{role}.scored_tokens"] += real
        return count

    def __enter__(self):
        self.handles.append(register_optimizer_step_post_hook(self._on_step))
        for role, network in self.networks.items():
            hook = transformer_of(network).register_forward_pre_hook(self._counter(role), with_kwargs=True)
            self.handles.append(hook)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def window(self, warmup: int) -> tuple[float, int, dict[str, float]]:
        """Seconds, steps and work (counter totals) after the first `warmup` steps."""
        if warmup < 1:  # the window opens at a stamp: the first step's start has none
            raise ValueError(f"warmup must be at least 1 step, got {warmup}")
        if len(self.stamps) <= warmup:
            raise RuntimeError(f"only {len(self.stamps)} optimizer steps were seen; {warmup} are warm-up")
        first, last = self.snapshots[warmup - 1], self.snapshots[-1]
        work = {name: last.get(name, 0.0) - first.get(name, 0.0) for name in last}
        return self.stamps[-1] - self.stamps[warmup - 1], len(self.stamps) - warmup, work

    def per_step(self, counter: str) -> list[float]:
        """One counter's value for each step (the first step counts from the start of training)."""
        values = [snapshot.get(counter, 0.0) for snapshot in self.snapshots]
        return [b - a for a, b in zip([0.0, *values[:-1]], values)]


@dataclass
class Run:
    """A trainer ready to go: `train()` runs it; the meter watches `trained` and the `networks`."""

    train: Callable[[], object]
    trained: torch.nn.Module
    networks: dict[str, torch.nn.Module]
    rollouts: list[dict] = field(default_factory=list)  # RL: episodes and longest answer of every rollout


# =====================================================================================
# The shared plan of each stage: examples and their order, computed the way our trainers draw them.
# =====================================================================================


def user_turn(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def assistant_turn(answer: str) -> list[dict]:
    return [{"role": "assistant", "content": answer}]


def sft_plan(steps: int) -> dict:
    """The demonstrations, and the rows of every batch our SFT loop draws (its own function and seed)."""
    _, tokenizer = load_policy(SFT_DIR)
    rows = data.load_dialogues(data.world_file("sft"))
    cfg = sft.sft_config("laptop", steps=steps, batch_size=SFT_BATCH)
    lengths = [len(ids) for ids, _ in sft.encode_dialogues(tokenizer, rows)]
    batches = sft.length_bucketed_batches(lengths, cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    ordered = [rows[i] for _ in range(steps) for i in next(batches)]
    return {"rows": rows, "cfg": cfg, "trl_rows": [{"prompt": user_turn(r["prompt"]),
                                                   "completion": assistant_turn(r["completion"])} for r in ordered]}


def single_pair_items(pairs: list[dict]) -> list[dict]:
    """Every pair its own labelling item, so that batches hold exactly `items_per_batch` pairs.

    Only pairs whose answers appear in no earlier pair: our trainers score a repeated answer once, TRL's twice,
    and the benchmark compares the same rows.
    """
    seen, items = set(), []
    for pair in pairs:
        answers = {(pair["prompt"], pair["chosen"]), (pair["prompt"], pair["rejected"])}
        if not answers & seen:
            seen |= answers
            items.append({**pair, "group": len(items)})
    return items


def preference_rows(batches: list[list[dict]]) -> list[dict]:
    return [{"prompt": user_turn(p["prompt"]), "chosen": assistant_turn(p["chosen"]),
             "rejected": assistant_turn(p["rejected"])} for batch in batches for p in batch]


def preference_pairs() -> list[dict]:
    return single_pair_items(dpo.preference_pairs(data.world_file("preferences")))


def reward_plan(steps: int) -> dict:
    """`steps` batches of REWARD_BATCH pairs, in the order our reward trainer draws them."""
    cfg = reward.reward_config("laptop", items_per_batch=REWARD_BATCH)
    train_pairs, _ = reward.split_by_prompt(preference_pairs(), cfg.heldout_fraction, cfg.seed)
    pairs = train_pairs[: steps * REWARD_BATCH]
    batches = reward.item_batches(pairs, cfg.items_per_batch, torch.Generator().manual_seed(cfg.seed))
    return {"pairs": pairs, "cfg": cfg, "trl_rows": preference_rows(batches)}


def dpo_plan(steps: int) -> dict:
    """The first `steps` batches of DPO_BATCH pairs our DPO trainer draws (after its own held-out split)."""
    # eval_*: train_dpo's check at step 0 and at the end, kept small (it is outside the timed window anyway).
    cfg = dpo.dpo_config("laptop", items_per_batch=DPO_BATCH, max_steps=steps, eval_every=10**9, eval_prompts=2,
                         heldout_pairs=2, max_new_tokens=8)
    pairs = preference_pairs()
    train_pairs, _ = reward.split_by_prompt(pairs, cfg.heldout_fraction, cfg.seed)
    batches = reward.item_batches(train_pairs, cfg.items_per_batch, torch.Generator().manual_seed(cfg.seed))[:steps]
    return {"pairs": pairs, "cfg": cfg, "trl_rows": preference_rows(batches)}


def rl_plan(stage: str, iterations: int) -> dict:
    """The RL configs; TRL's prompts come from the rollouts our trainer ran just before (`prompt_order`)."""
    prompts = [row["prompt"] for row in data.load_prompts(data.world_file("prompts"))]
    if stage == "ppo":
        cfg = ppo.ppo_config("laptop", iterations=iterations, batch_size=EPISODES, minibatch_size=MINIBATCH,
                             ppo_epochs=UPDATES["ppo"] * MINIBATCH // EPISODES, save_every=10**9)
    else:
        cfg = rloo_grpo.group_config("rloo", "laptop", iterations=iterations, group_size=GROUP_SIZE,
                                     prompts_per_iteration=EPISODES // GROUP_SIZE, minibatch_size=MINIBATCH,
                                     epochs=UPDATES["rloo"] * MINIBATCH // EPISODES)
    return {"prompts": prompts, "cfg": cfg, "updates": UPDATES[stage], "prompt_order": []}


PLANS = {"sft": sft_plan, "reward": reward_plan, "dpo": dpo_plan}


# =====================================================================================
# Our side: one function per stage.
# =====================================================================================


def ours_sft(plan: dict) -> Run:
    model, tokenizer = load_policy(SFT_DIR)
    return Run(lambda: sft.train_language_model(model, tokenizer, plan["rows"], plan["cfg"], progress=False),
               model, {"policy": model})


def ours_reward(plan: dict) -> Run:
    policy, tokenizer = load_policy(SFT_DIR)
    model = reward.RewardModel.from_policy(policy)
    return Run(lambda: reward.train_reward_model(model, tokenizer, plan["pairs"], plan["cfg"], progress=False),
               model, {"reward": model})


def ours_dpo(plan: dict) -> Run:
    policy, tokenizer = load_policy(SFT_DIR)
    reference, _ = load_policy(SFT_DIR)
    return Run(lambda: dpo.train_dpo(policy, reference, tokenizer, plan["pairs"], plan["cfg"], progress=False),
               policy, {"policy": policy, "reference": reference})


def record_rollouts(trainer, run: Run, plan: dict) -> None:
    """Wrap our trainer's rollout: note its prompts (TRL gets them next), episodes and longest answer."""
    rollout = trainer.rollout
    plan["prompt_order"] = []

    def observed(questions: list[str]):
        batch = rollout(questions)
        # PPO answers 64 prompts once; TRL's RLOO gets the first 16, each answered 4 times.
        plan["prompt_order"] += questions[: EPISODES // GROUP_SIZE]
        run.rollouts.append({"episodes": batch.input_ids.shape[0], "longest_answer": int(batch.mask.sum(dim=1).max())})
        return batch

    trainer.rollout = observed


def ours_rl(plan: dict) -> Run:
    """Our PPO (with its critic) or our RLOO, on the shipped SFT policy and reward model."""
    policy, tokenizer = load_policy(SFT_DIR)
    reference, _ = load_policy(SFT_DIR)
    reward_model, _ = reward.RewardModel.load(REWARD_DIR)
    cfg = replace(plan["cfg"], seed=plan["seed"])
    if isinstance(cfg, ppo.PPOConfig):
        trainer = ppo.PPOTrainer(policy, reference, reward_model, tokenizer, plan["prompts"], cfg)
        networks = {"policy": policy, "reference": reference, "reward": reward_model, "critic": trainer.critic}
    else:
        trainer = rloo_grpo.GroupTrainer(policy, reference, reward_model, tokenizer, plan["prompts"], cfg)
        networks = {"policy": policy, "reference": reference, "reward": reward_model}
    run = Run(lambda: trainer.train(progress=False), policy, networks)
    record_rollouts(trainer, run, plan)
    return run


# =====================================================================================
# TRL's side: one function per stage.
# =====================================================================================


class InOrder:
    """Mixed into a TRL trainer: read the training examples in dataset order (our trainer's batches)."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def in_order(trainer_class: type) -> type:
    return type(f"InOrder{trainer_class.__name__}", (InOrder, trainer_class), {})


def trl_settings(**overrides) -> dict:
    """TrainingArguments every TRL run shares: CPU, float32, no gradient checkpointing, quiet, no checkpoints."""
    settings = {"output_dir": SCRATCH.name, "use_cpu": True, "bf16": False, "fp16": False,
                "gradient_checkpointing": False, "report_to": [], "save_strategy": "no", "disable_tqdm": True,
                "seed": 0}
    return {**settings, **overrides}


def quiet(trainer):
    """Without the callback that prints every log line (progress bars are off)."""
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer


def trl_sft(plan: dict) -> Run:
    model, tokenizer = load_policy(SFT_DIR)
    cfg = plan["cfg"]
    args = SFTConfig(max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
                     weight_decay=cfg.weight_decay, adam_beta2=0.95, max_grad_norm=cfg.grad_clip,
                     completion_only_loss=True, shuffle_dataset=False, **trl_settings())
    trainer = quiet(in_order(SFTTrainer)(model=model, args=args, train_dataset=Dataset.from_list(plan["trl_rows"]),
                                         processing_class=tokenizer))
    return Run(trainer.train, model, {"policy": model})


def trl_reward(plan: dict) -> Run:
    _, tokenizer = load_policy(SFT_DIR)
    model = GPT2ForSequenceClassification.from_pretrained(SFT_DIR, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    cfg = plan["cfg"]
    args = RewardConfig(num_train_epochs=1, per_device_train_batch_size=cfg.items_per_batch, learning_rate=cfg.lr,
                        weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, **trl_settings())
    trainer = quiet(in_order(RewardTrainer)(model=model, args=args, train_dataset=Dataset.from_list(plan["trl_rows"]),
                                            processing_class=tokenizer))
    return Run(trainer.train, model, {"reward": model})


def trl_dpo(plan: dict) -> Run:
    policy, tokenizer = load_policy(SFT_DIR)
    reference, _ = load_policy(SFT_DIR)
    cfg = plan["cfg"]
    args = DPOConfig(beta=cfg.beta, learning_rate=cfg.lr, max_steps=cfg.max_steps,
                     per_device_train_batch_size=cfg.items_per_batch, max_grad_norm=cfg.grad_clip,
                     precompute_ref_log_probs=True, **trl_settings())
    trainer = quiet(in_order(DPOTrainer)(model=policy, ref_model=reference, args=args, processing_class=tokenizer,
                                         train_dataset=Dataset.from_list(plan["trl_rows"])))
    return Run(trainer.train, policy, {"policy": policy, "reference": reference})


def reward_function(reward_model: reward.RewardModel, tokenizer, missing_end_penalty: float) -> Callable:
    """TRL's reward interface around our reward model: one score per completion, our end-token penalty included."""
    end_id = tokenizer.convert_tokens_to_ids(END)

    def our_reward_model(prompts: list, completions: list, completion_ids: list, **kwargs) -> list[float]:
        questions = [messages[-1]["content"] for messages in prompts]
        answers = [messages[-1]["content"].strip() for messages in completions]
        scores = reward.score_answers(reward_model, tokenizer, questions, answers)
        finished = torch.tensor([end_id in ids for ids in completion_ids])
        return torch.where(finished, scores, scores + missing_end_penalty).tolist()

    return our_reward_model


def record_generations(trainer, run: Run) -> None:
    """Wrap TRL's `_generate`: note the episodes and the longest answer (end token included) of every rollout."""
    generate = trainer._generate  # noqa: SLF001 -- TRL's own rollout step, wrapped to count its work

    def observed(prompts: list):
        prompt_ids, completion_ids, completions = generate(prompts)
        run.rollouts.append({"episodes": len(completion_ids), "longest_answer": max(map(len, completion_ids))})
        return prompt_ids, completion_ids, completions

    trainer._generate = observed  # noqa: SLF001


def trl_rloo(plan: dict) -> Run:
    """TRL's RLOOTrainer with our rollout shape: 16 prompts x 4 answers, minibatches of 16, 16 or 8 updates."""
    policy, tokenizer = load_policy(SFT_DIR)
    reward_model, _ = reward.RewardModel.load(REWARD_DIR)
    cfg = plan["cfg"]
    updates = plan["updates"]
    args = RLOOConfig(max_steps=cfg.iterations * updates, num_generations=GROUP_SIZE, generation_batch_size=EPISODES,
                      per_device_train_batch_size=MINIBATCH, num_iterations=updates * MINIBATCH // EPISODES,
                      temperature=cfg.temperature, max_completion_length=cfg.max_new_tokens, beta=cfg.beta,
                      learning_rate=cfg.lr, max_grad_norm=cfg.grad_clip, shuffle_dataset=False,
                      **trl_settings(seed=plan["seed"]))
    prompts = Dataset.from_list([{"prompt": user_turn(q)} for q in plan["prompt_order"]])
    trainer = quiet(RLOOTrainer(model=policy, args=args, train_dataset=prompts, processing_class=tokenizer,
                                reward_funcs=reward_function(reward_model, tokenizer, cfg.missing_end_penalty)))
    run = Run(trainer.train, policy, {"policy": policy, "reference": trainer.ref_model, "reward": reward_model})
    record_generations(trainer, run)
    return run


SIDES = {
    "sft": (ours_sft, trl_sft), "reward": (ours_reward, trl_reward), "dpo": (ours_dpo, trl_dpo),
    "ppo": (ours_rl, trl_rloo), "rloo": (ours_rl, trl_rloo),
}


# =====================================================================================
# Running, pairing, reporting.
# =====================================================================================


def measure(run: Run, stage: str, warmup: int, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Train under the meter; the throughput and the work per step of the timed window."""
    main_role = "reward" if stage == "reward" else "policy"
    with WorkMeter(run.trained, run.networks, clock) as meter:
        run.train()
    seconds, steps, work = meter.window(warmup)
    result = {"seconds": seconds, "steps": steps, "work_per_step": {k: v / steps for k, v in sorted(work.items())},
              "trained_tokens_per_step": meter.per_step(f"{main_role}.trained_tokens")}
    if stage == "sft":
        units = work["policy.trained_tokens"]
    elif stage in ("reward", "dpo"):
        units = work[f"{main_role}.trained_rows"] / 2  # a chosen and a rejected row per pair
    else:
        timed = run.rollouts[warmup // UPDATES[stage]:]
        units = sum(rollout["episodes"] for rollout in timed)
        result |= {"rollouts": run.rollouts, "updates_per_64_episodes": EPISODES * steps / units,
                   "decode_steps_per_rollout": work.get("policy.decode_passes", 0) / len(timed) + 1,
                   "longest_answer_per_rollout": statistics.mean(r["longest_answer"] for r in timed)}
    return result | {"units": units, "rate": units / seconds}


def run_stage(stage: str, sizes: dict, reps: int, clock: Callable[[], float] = time.perf_counter) -> dict:
    """`reps` paired repetitions, ours then TRL's, each with fresh trainers and models."""
    rl = stage in UPDATES
    steps = sizes["iterations"] if rl else sizes["steps"]
    warmup = sizes["warmup_iterations"] * UPDATES[stage] if rl else sizes["warmup_steps"]
    plan = rl_plan(stage, steps) if rl else PLANS[stage](steps)
    ours, theirs = SIDES[stage]
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    for rep in range(reps):
        plan["seed"] = rep  # RL: each repetition samples with its own seed, on both sides (see the docstring)
        for side, make in (("ours", ours), ("trl", theirs)):
            torch.manual_seed(0)  # the same start on both sides (our reward head is drawn from it)
            results[side].append(measure(make(plan), stage, warmup, clock))
            print(f"  {stage} rep {rep + 1}/{reps} {side:4s} {results[side][-1]['rate']:10.1f} {UNITS[stage]}/s",
                  flush=True)
    ratios = [o["rate"] / t["rate"] for o, t in zip(results["ours"], results["trl"])]
    return {"unit": UNITS[stage], "warmup_steps": warmup, **results, "ratios": ratios,
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ours_median": statistics.median(r["rate"] for r in results["ours"]),
            "trl_median": statistics.median(r["rate"] for r in results["trl"])}


def work_summary(stage: str, runs: list[dict]) -> str:
    """What one side did per step of the timed window (mean over its repetitions), in words."""
    mean = {key: statistics.mean(r["work_per_step"].get(key, 0.0) for r in runs) for key in runs[0]["work_per_step"]}
    if stage in UPDATES:
        per_run = {key: statistics.mean(r[key] for r in runs) for key in
                   ("updates_per_64_episodes", "decode_steps_per_rollout", "longest_answer_per_rollout")}
        critic = f" + critic {mean['critic.trained_tokens']:,.0f}" if "critic.trained_tokens" in mean else ""
        return (f"{per_run['updates_per_64_episodes']:.0f} updates per 64 episodes; per update "
                f"{mean['policy.trained_rows']:.0f} episodes, {mean['policy.trained_tokens']:,.0f} tokens{critic}; "
                f"per rollout {per_run['decode_steps_per_rollout']:.1f} decode steps, longest answer "
                f"{per_run['longest_answer_per_rollout']:.1f}")
    role = "reward" if stage == "reward" else "policy"
    rows = mean[f"{role}.trained_rows"]
    what = f"{rows:.0f} dialogues" if stage == "sft" else f"{rows / 2:.0f} pairs"
    return (f"{what}, {mean[f'{role}.trained_tokens']:,.1f} non-pad tokens "
            f"({mean[f'{role}.trained_positions']:,.0f} positions with padding)")


def print_table(results: dict) -> None:
    print(f"\n{'stage':7s} {'throughput':13s} {'ours':>9s} {'TRL':>9s}   ours / TRL (range)")
    for stage, result in results["stages"].items():
        print(f"{stage:7s} {result['unit'] + '/s':13s} {result['ours_median']:9.1f} {result['trl_median']:9.1f}   "
              f"{result['ratio_median']:.2f} ({result['ratio_min']:.2f}-{result['ratio_max']:.2f})")
    print(f"medians of {results['reps']} paired repetition(s), {results['clock']} seconds; ratio above 1: ours is "
          "faster\n\nwork per step:")
    for stage, result in results["stages"].items():
        for side, name in (("ours", "ours"), ("trl", "TRL")):
            print(f"  {stage:7s} {name:5s} {work_summary(stage, result[side])}")


def load_average() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().strip() if path.is_file() else " ".join(f"{x:.2f}" for x in os.getloadavg())


def check_quiet_machine() -> str:
    """Print the load; warn when other work is running (above half the CPUs busy on average over a minute)."""
    load = load_average()
    print(f"/proc/loadavg at start: {load} ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)")
    if float(load.split()[0]) > 0.5 * (os.cpu_count() or 1):
        print("WARNING: the machine is busy; these figures are unreliable (run again on a quiet machine)")
    return load


@contextlib.contextmanager
def quiet_libraries():
    """Silence the libraries' progress bars, load reports and expected warnings during the runs."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's reference-log-prob precompute bar
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {','.join(STAGES)}")
    parser.add_argument("--reps", type=int, default=None, help="paired repetitions (default 5; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="few steps, one repetition: about a minute")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results to PATH")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time, not the wall clock: on a busy machine, with "
                             "--threads 1, it counts the work done, not the waits for a core")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if args.reps is not None and args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    clock = time.process_time if args.cpu_time else time.perf_counter
    reps = args.reps or sizes["reps"]
    results = {"loadavg_start": check_quiet_machine(), "quick": args.quick, "reps": reps, "sizes": sizes,
               "torch_threads": torch.get_num_threads(), "clock": "cpu time" if args.cpu_time else "wall",
               "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "trl": trl.__version__}, "stages": {}}
    with quiet_libraries():
        for stage in stages:
            results["stages"][stage] = run_stage(stage, sizes, reps, clock)
    results["loadavg_end"] = load_average()
    print_table(results)
    print(f"/proc/loadavg at end: {results['loadavg_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
