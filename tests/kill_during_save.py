"""Kill a process in the middle of checkpoint saves, many times, and check what each kill left behind.

Run by tests/test_faults.py: `python tests/kill_during_save.py ROOT KILLS STAGE SEED`. This process
loads the shipped nano checkpoints once, saves version 0 of three checkpoints under ROOT, then, for
each kill, forks a child that saves newer versions and SIGKILLs it:

    random  KILLS times: the child saves sft, reward and ppo (versions v, v+1, ...) in a loop and is
            killed after a random delay (up to one loop), so wherever the kill lands: mid-write,
            between files, between the renames
    steps   the child saves STAGE once and is killed at its k-th file-system call under ROOT (open,
            mkdir, fsync, link, rename, unlink, ...), for every k: every step of that save

Each save writes its version into every part (a policy weight, a reward-model weight, a critic
weight, both optimizers' first moments, the PPO iteration and history, metrics.json). After each
kill, this process checks every checkpoint the way a user's next command would read it
(`find_checkpoint`'s check, `load_policy`, `RewardModel.load`, `PPOTrainer.resume`): each must load,
hold one version in all its parts, and that version must be the last one the child confirmed
(old) or the one it was saving (new). Prints one JSON line with the counts and any failures.
"""

from __future__ import annotations

import builtins
import copy
import io
import itertools
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers.utils.logging import disable_progress_bar

from rlhf_lab import ppo, stages
from rlhf_lab.checkpoints import check_checkpoint
from rlhf_lab.config import data_dir
from rlhf_lab.policy import load_policy, save_policy
from rlhf_lab.reward import RewardModel

STAGES = ("sft", "reward", "ppo")
KINDS = {"sft": "policy", "reward": "reward", "ppo": "ppo"}
# The file-system calls a save makes from Python; `steps` mode kills at each one in turn.
STEP_CALLS = [(os, "open"), (os, "rename"), (os, "replace"), (os, "link"), (os, "fsync"), (os, "mkdir"),
              (os, "rmdir"), (os, "unlink"), (shutil, "rmtree"), (builtins, "open"), (io, "open")]


class Saver:
    """The three checkpoints of a run, each tagged with a version in every part."""

    def __init__(self, root: Path):
        self.root = root
        shipped = data_dir() / "checkpoints"
        policy, self.tokenizer = load_policy(shipped / "sft")
        self.reward_model, _ = RewardModel.load(shipped / "reward")
        cfg = ppo.PPOConfig(iterations=10**6, batch_size=2, minibatch_size=2, max_new_tokens=4, save_every=10**6)
        self.trainer = ppo.PPOTrainer(policy, copy.deepcopy(policy), self.reward_model, self.tokenizer,
                                      ["what is 1 plus 1?"], cfg)
        # Adam has moments to save only after a step: one step with zero gradients makes them.
        for optimizer, module in ((self.trainer.policy_optimizer, self.trainer.policy),
                                  (self.trainer.critic_optimizer, self.trainer.critic)):
            (sum(parameter.sum() for parameter in module.parameters()) * 0.0).backward()
            optimizer.step()
            optimizer.zero_grad()

    def tag(self, version: int) -> None:
        with torch.no_grad():
            self.trainer.policy.transformer.wpe.weight[0, 0] = version
            self.reward_model.backbone.wpe.weight[0, 0] = version
            self.trainer.critic.head.bias.fill_(version)
            for optimizer in (self.trainer.policy_optimizer, self.trainer.critic_optimizer):
                optimizer.state[optimizer.param_groups[0]["params"][0]]["exp_avg"].view(-1)[0] = version
        self.trainer.iteration = version
        self.trainer.history = [{"iteration": i, "version": version} for i in range(version)]

    def save(self, stage: str, version: int) -> None:
        self.tag(version)
        out = self.root / stage
        if stage == "sft":  # as a stage does: the policy, then the run's files beside it
            save_policy(self.trainer.policy, self.tokenizer, out)
            stages.save_run(out, self.trainer.history_frame(), {"version": version})
        elif stage == "reward":
            self.reward_model.save(out, self.tokenizer)
            stages.save_run(out, None, {"version": version})
        else:
            self.trainer.save(out)

    def version_on_disk(self, stage: str) -> int:
        """The version of a checkpoint as the next command would load it; raises if it cannot be loaded
        or its parts disagree."""
        path = check_checkpoint(self.root / stage, KINDS[stage])
        if stage == "reward":
            model, _ = RewardModel.load(path)
            versions = {model.backbone.wpe.weight[0, 0].item()}
        else:
            policy, _ = load_policy(path)
            versions = {policy.transformer.wpe.weight[0, 0].item()}
        if (path / "metrics.json").is_file():
            versions.add(json.loads((path / "metrics.json").read_text())["version"])
        if stage == "ppo":
            self.trainer.resume(path)  # refuses parts of different saves
            versions |= {self.trainer.iteration, self.trainer.critic.head.bias[0].item()}
            versions |= {opt.state[opt.param_groups[0]["params"][0]]["exp_avg"].view(-1)[0].item()
                         for opt in (self.trainer.policy_optimizer, self.trainer.critic_optimizer)}
        if len(versions) != 1:
            raise AssertionError(f"{path} mixes versions {sorted(versions)}")
        return int(versions.pop())


def kill_at_step(step: int, root: Path) -> None:
    """From now on, SIGKILL this process at its `step`-th file-system call under `root` (or fsync;
    -1: count them only)."""
    counter = itertools.count()

    def wrapped(function):
        def call(*args, **kwargs):
            touches_root = function is os.fsync or any(str(root) in str(arg) for arg in args[:2])
            if touches_root and next(counter) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)
        return call

    for module, name in STEP_CALLS:
        setattr(module, name, wrapped(getattr(module, name)))
    kill_at_step.counter = counter


def run_child(saver: Saver, plan, write_end: int) -> None:
    """In the forked child: save as planned, confirming each finished save on the pipe; never returns."""
    try:
        for stage, version in plan:
            saver.save(stage, version)
            os.write(write_end, f"{stage} {version}\n".encode())
        if hasattr(kill_at_step, "counter"):
            os.write(write_end, f"steps {next(kill_at_step.counter)}\n".encode())
    finally:
        os._exit(0)


def fork_and_kill(saver: Saver, plan, delay: float | None, step: int | None) -> list[str]:
    """Fork a child that follows `plan`, kill it after `delay` seconds (or let it kill itself at
    `step`); returns the lines it confirmed."""
    threads = [thread.name for thread in threading.enumerate()]
    assert threads == ["MainThread"], f"threads at fork (their locks could hang the child): {threads}"
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        if step is not None:
            kill_at_step(step, saver.root)
        run_child(saver, plan, write_end)
    os.close(write_end)
    if delay is not None:
        time.sleep(delay)
        os.kill(child, signal.SIGKILL)
    deadline, hung = time.monotonic() + 60, []
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:  # a child that hangs is killed, and reported
            os.kill(child, signal.SIGKILL)
            hung = ["hung"]
        time.sleep(0.002)
    with os.fdopen(read_end) as confirmations:
        return confirmations.read().split("\n")[:-1] + hung


def check_after_kill(saver: Saver, versions: dict, plan: list, lines: list[str], counts: dict, failures: list) -> None:
    """Every checkpoint loads, whole; the one being saved when the kill came holds the old version or
    the new one, every other one the version confirmed last."""
    if "hung" in lines:
        failures.append(f"the child saving {plan[0]} hung")
    confirmed = [line.split() for line in lines if line.split()[0] in STAGES]
    expected = dict(versions) | {stage: int(version) for stage, version in confirmed}
    in_flight = plan[len(confirmed)] if len(confirmed) < len(plan) else (None, None)
    for stage in dict.fromkeys(stage for stage, _ in plan[:len(confirmed) + 1]):  # the ones it may have touched
        try:
            found = saver.version_on_disk(stage)
        except Exception as error:  # any failure to load is what this looks for
            failures.append(f"{stage}: {type(error).__name__}: {error}")
            continue
        allowed = {expected[stage], in_flight[1]} if stage == in_flight[0] else {expected[stage]}
        if found not in allowed:
            failures.append(f"{stage}: version {found} on disk; expected one of {sorted(allowed)}")
        if stage == in_flight[0]:
            counts["new" if found == in_flight[1] else "old"] += 1
        versions[stage] = found


def main(root: Path, kills: int, steps_stage: str, seed: int) -> dict:
    """`kills` random kills while saving all three checkpoints, then a kill at every step of one save
    of `steps_stage`."""
    saver, rng = Saver(root), random.Random(seed)
    started = time.perf_counter()
    for stage in STAGES:
        saver.save(stage, 0)
    loop_seconds = time.perf_counter() - started
    versions = {stage: 0 for stage in STAGES}
    result = {"loop_seconds": loop_seconds}
    for mode in ("random", "steps"):
        counts, failures, done = {"old": 0, "new": 0}, [], 0
        if mode == "random":
            for _ in range(kills):
                start = max(versions.values()) + 1
                plan = [(stage, version) for version in range(start, start + 1000) for stage in STAGES]
                lines = fork_and_kill(saver, plan, rng.uniform(0, loop_seconds), None)
                check_after_kill(saver, versions, plan, lines, counts, failures)
                done += 1
        else:
            plan = [(steps_stage, max(versions.values()) + 1)]
            lines = fork_and_kill(saver, plan, None, -1)  # count the steps of one save
            check_after_kill(saver, versions, plan, lines, counts, failures)
            for step in range(int(lines[-1].split()[1])):
                plan = [(steps_stage, max(versions.values()) + 1)]
                check_after_kill(saver, versions, plan, fork_and_kill(saver, plan, None, step), counts, failures)
                done += 1
        result[mode] = {"kills": done, **counts, "failures": failures}
    result["leftovers"] = sorted(path.name for path in root.iterdir() if ".new-" in path.name or ".old-" in path.name)
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ["HF_DEACTIVATE_ASYNC_LOAD"] = "1"  # transformers 5 loads weights on a pool of threads otherwise
    # A forked child has only the thread that forked: no thread may hold a lock then. transformers'
    # progress bars would start tqdm's monitor thread, so they are off here.
    tqdm.monitor_interval = 0
    disable_progress_bar()
    root_arg, kills_arg, stage_arg, seed_arg = sys.argv[1:5]
    print(json.dumps(main(Path(root_arg), int(kills_arg), stage_arg, int(seed_arg))))
