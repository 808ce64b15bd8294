"""The benchmark script, run as a user runs it (`python benchmarks/bench_training.py --quick`).

Only that it runs and reports sensible figures: the numbers themselves depend on the machine.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from rlhf_lab.config import REPO_DIR

pytestmark = pytest.mark.slow  # training runs or subprocesses: not in the quick inner loop

SCRIPT = REPO_DIR / "benchmarks" / "bench_training.py"


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", *args], cwd=REPO_DIR, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def test_quick_benchmark_prints_every_figure():
    output = run_benchmark().stdout
    figures = {
        "training": r"training\s+([\d.]+) tokens/s",
        "generation": r"generation\s+([\d.]+) tokens/s",
        "ppo": r"PPO\s+([\d.]+) episodes/s",
        "peak_rss": r"peak RSS\s+([\d.]+) MiB",
    }
    for name, pattern in figures.items():
        match = re.search(pattern, output)
        assert match, f"no {name} figure in:\n{output}"
        assert float(match.group(1)) > 0, f"{name} figure is 0 in:\n{output}"
    shares = [float(s) for s in re.findall(r"^\s+\w+\s+([\d.]+) % of PPO time$", output, flags=re.MULTILINE)]
    assert len(shares) == 4, output  # generation, scoring, update, other
    assert abs(sum(shares) - 100) < 0.5, output


def test_quick_benchmark_json_is_consistent():
    result = json.loads(run_benchmark("--json", "--scale", "ci", "--threads", "1").stdout)
    assert result["scale"] == "ci" and result["quick"] and result["torch_threads"] == 1
    training, generation, ppo = result["training"], result["generation"], result["ppo"]
    assert training["tokens"] > 0 and training["tokens_per_s"] > 0
    # The quick run trains 3 steps of 8 dialogues: the tokens are at most 8 rows of at most n_positions.
    assert training["tokens"] <= training["steps"] * training["batch_size"] * 192
    assert 0 < generation["tokens"] <= generation["prompts"] * generation["max_new_tokens"]
    rate = generation["tokens"] / generation["seconds"]
    assert abs(generation["tokens_per_s"] - rate) < 1e-6 * generation["tokens_per_s"]
    assert ppo["episodes"] == ppo["iterations"] * ppo["batch_size"]
    assert abs(ppo["episodes_per_s"] - ppo["episodes"] / ppo["seconds"]) < 1e-6 * ppo["episodes_per_s"]
    assert set(ppo["time_share"]) == {"generation", "scoring", "update", "other"}
    assert all(share >= 0 for share in ppo["time_share"].values())
    assert abs(sum(ppo["time_share"].values()) - 1) < 1e-6
    assert result["peak_rss_mb"] > 50  # torch alone takes more than this: the unit (MiB) is right
