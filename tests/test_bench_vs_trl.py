"""benchmarks/bench_vs_trl.py, run as a user runs it (`--quick`), and its instrument on a tiny model.

Not the speed (it depends on the machine and its load): that the output has every figure, that the timed
window holds the steps it should, and that both sides did the same work per step -- the same examples, batches
and tokens for SFT, reward model and DPO; the same rollout shape for the RL stages.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

pytest.importorskip("trl", reason="the TRL benchmark needs the trl extra: pip install -e '.[trl]'")

from rlhf_lab.config import REPO_DIR

pytestmark = pytest.mark.slow  # training runs or subprocesses: not in the quick inner loop

SCRIPT = REPO_DIR / "benchmarks" / "bench_vs_trl.py"
STAGES = ("sft", "reward", "dpo", "ppo", "rloo")


def load_script():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_DIR)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, cwd=REPO_DIR, env=environment,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results.json"
    result = run_script("--quick", "--json", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(path.read_text())


def test_output_has_the_load_and_a_ratio_for_every_stage(quick_run):
    output, results = quick_run
    assert "/proc/loadavg at start:" in output
    assert set(results["stages"]) == set(STAGES)
    for stage in STAGES:
        assert any(line.split()[:1] == [stage] and "(" in line for line in output.splitlines()), output


def test_ratios_are_the_paired_ratios_of_the_rates(quick_run):
    _, results = quick_run
    for stage, result in results["stages"].items():
        assert len(result["ours"]) == len(result["trl"]) == results["reps"]
        for run in result["ours"] + result["trl"]:
            assert run["seconds"] > 0 and run["units"] > 0
            assert run["rate"] == pytest.approx(run["units"] / run["seconds"])
        ratios = [o["rate"] / t["rate"] for o, t in zip(result["ours"], result["trl"])]
        assert result["ratio_median"] == pytest.approx(statistics.median(ratios)), stage
        assert result["ratio_min"] <= result["ratio_median"] <= result["ratio_max"]


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_both_sides_train_on_the_same_batches(quick_run, stage):
    """Same rows and the same non-pad tokens at every step, warm-up included, in every repetition."""
    _, results = quick_run
    result, sizes = results["stages"][stage], results["sizes"]
    role = "reward" if stage == "reward" else "policy"
    for ours, theirs in zip(result["ours"], result["trl"]):
        assert len(ours["trained_tokens_per_step"]) == sizes["steps"]
        assert ours["trained_tokens_per_step"] == theirs["trained_tokens_per_step"]
        assert ours["steps"] == theirs["steps"] == sizes["steps"] - sizes["warmup_steps"]
        assert ours["work_per_step"][f"{role}.trained_rows"] == theirs["work_per_step"][f"{role}.trained_rows"]
        # Padding differs (our passes of rows of similar length; DPO's prompt and answer blocks), tokens do not.
        for side in (ours, theirs):
            assert side["work_per_step"][f"{role}.trained_positions"] >= side["work_per_step"][f"{role}.trained_tokens"]
    # DPO's reference log-probs are computed before the first step, on both sides: none inside the window.
    if stage == "dpo":
        assert all(run["work_per_step"].get("reference.scored_tokens", 0) == 0
                   for run in result["ours"] + result["trl"])


@pytest.mark.parametrize("stage, updates", [("ppo", 16), ("rloo", 8)])
def test_both_sides_have_the_same_rollout_shape(quick_run, stage, updates):
    _, results = quick_run
    result, sizes = results["stages"][stage], results["sizes"]
    for run in result["ours"] + result["trl"]:
        assert [r["episodes"] for r in run["rollouts"]] == [64] * sizes["iterations"]
        assert run["units"] == 64 * (sizes["iterations"] - sizes["warmup_iterations"])
        assert run["updates_per_64_episodes"] == updates
        assert run["work_per_step"]["policy.trained_rows"] == 16  # episodes per update
        # Generation takes at least one step per token of the longest answer, and at most max_new_tokens.
        assert run["longest_answer_per_rollout"] <= run["decode_steps_per_rollout"] <= 64
    # PPO's critic trains on every minibatch the policy trains on; TRL's RLOO has no critic.
    for ours, theirs in zip(result["ours"], result["trl"]):
        critic_tokens = ours["work_per_step"].get("critic.trained_tokens")
        if stage == "ppo":
            assert critic_tokens == ours["work_per_step"]["policy.trained_tokens"]
        else:
            assert critic_tokens is None
        assert "critic.trained_tokens" not in theirs["work_per_step"]


def test_unknown_stage_is_refused_by_name():
    result = run_script("--stages", "sft,ppoo")
    assert result.returncode == 2
    assert "ppoo" in result.stderr


def test_work_meter_counts_tokens_and_stamps_only_the_tracked_optimizer():
    bench = load_script()
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20, n_positions=16)
    model, other = GPT2LMHeadModel(config), torch.nn.Linear(2, 2)
    optimizer, other_optimizer = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(other.parameters())
    input_ids = torch.randint(20, (3, 5))
    attention_mask = torch.tensor([[1] * 5, [0, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    with bench.WorkMeter(model, {"policy": model}) as meter:
        for _ in range(3):
            model(input_ids=input_ids, attention_mask=attention_mask).logits.sum().backward()
            optimizer.step()
            other_optimizer.step()  # not the trained model's: no stamp
            with torch.no_grad():
                model(input_ids=input_ids[:, :1])  # a decode step
    assert len(meter.stamps) == 3
    assert meter.per_step("policy.trained_tokens") == [11, 11, 11]  # 5 + 4 + 2 real tokens
    seconds, steps, work = meter.window(warmup=1)
    assert steps == 2 and seconds > 0
    # The window starts at the last warm-up stamp: steps 2 and 3, and the decode passes after stamps 1 and 2.
    assert work["policy.trained_rows"] == 6 and work["policy.trained_positions"] == 30
    assert work["policy.decode_passes"] == 2
