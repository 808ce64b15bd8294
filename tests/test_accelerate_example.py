"""examples/dpo_accelerate.py under `accelerate launch` with two CPU processes (data parallelism).

Each process writes rank{N}.json; the checks: both ranks ran, knew they were 2, took every step,
read different data, and ended with identical weights that differ from the start -- which only
happens if the gradients were averaged across the processes (each process alone, on its own data,
would end somewhere else).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # training runs or subprocesses: not in the quick inner loop

pytest.importorskip("trl", reason='the accelerate example needs the trl extra: pip install -e ".[trl]"')
pytest.importorskip("accelerate", reason='the accelerate example needs the trl extra: pip install -e ".[trl]"')

REPO = Path(__file__).resolve().parent.parent
STEPS = 3


def free_port() -> int:
    """A TCP port nobody listens on, so parallel test runs do not collide on accelerate's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("dpo-accelerate")
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(REPO / "examples" / "dpo_accelerate.py"),
               "--max-steps", str(STEPS), "--max-pairs", "96", "--batch-size", "4", "--out", str(out)]
    # CUDA_VISIBLE_DEVICES="": two CPU processes even on a machine with GPUs; one thread each.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"accelerate launch failed ({result.returncode}):\n{output}"
    return out, result


def test_both_processes_took_part(two_process_run):
    out, result = two_process_run
    reports = [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]
    assert [report["rank"] for report in reports] == [0, 1], f"rank files: {sorted(p.name for p in out.iterdir())}"
    for report in reports:
        assert report["world_size"] == 2
        assert report["device"].startswith("cpu")
        assert report["steps"] == STEPS
        assert report["pairs_per_step"] == 8  # 4 pairs per process, 2 processes
        assert len(report["losses"]) == STEPS
        assert f"rank {report['rank']} of 2" in result.stdout
    # Each process read its own share of the data ...
    assert reports[0]["first_example"] != reports[1]["first_example"]


def test_gradients_were_averaged(two_process_run):
    out, _ = two_process_run
    rank0, rank1 = (json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert rank0["start_checksum"] == rank1["start_checksum"]
    assert rank0["end_checksum"] != rank0["start_checksum"], "training changed the weights"
    # ... yet both copies took the very same steps: DDP averaged the gradients.
    assert rank0["end_checksum"] == pytest.approx(rank1["end_checksum"], rel=0, abs=1e-9)


def test_main_process_saved_the_policy(two_process_run):
    out, _ = two_process_run
    from rlhf_lab.policy import load_policy

    model, tokenizer = load_policy(out / "policy")
    checksum = sum(parameter.double().sum().item() for parameter in model.parameters())
    rank0 = json.loads((out / "rank0.json").read_text())
    assert checksum == pytest.approx(rank0["end_checksum"], abs=1e-6)
    assert tokenizer.pad_token != tokenizer.eos_token
