"""The command line, run exactly as a user runs it: `python -m rlhf_lab ...` in a subprocess.

Each call starts a fresh Python (about two seconds, mostly importing torch), so the tests use the
shipped nano checkpoints, the ci scale and a few training steps only.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from rlhf_lab.cli import build_parser
from rlhf_lab.config import REPO_DIR

SHIPPED = REPO_DIR / "data" / "checkpoints"
DOCUMENTED_COMMANDS = {"data", "pretrain", "sft", "label", "reward", "ppo", "evaluate"}
# The fields `evaluate --json` documents (rlhf_lab/evaluate.py), and those `--versus` adds.
BEHAVIOUR_FIELDS = {"mean_score", "flawed_rate", "refusal_rate_harmful", "over_refusal_rate", "arithmetic_accuracy",
                    "fact_accuracy", "rudeness_rate", "well_formed_rate"}
VERSUS_FIELDS = {"win_rate", "tie_rate"}


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m rlhf_lab *args` from the repository root; returns the finished process."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rlhf_lab", *map(str, args)], cwd=REPO_DIR, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess) -> str:
    """Bad input: exit code 2, a one-line explanation on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result.stderr


# The commands the parser knows, read from its usage line "{data,pretrain,...}".
COMMANDS = re.search(r"\{([a-z_,-]+)\}", build_parser().format_usage()).group(1).split(",")


def test_top_level_help_lists_and_describes_every_command():
    assert DOCUMENTED_COMMANDS <= set(COMMANDS)
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    description = result.stdout.split("positional arguments")[0]  # the module docstring
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", description, re.MULTILINE), f"{command} has no description"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m rlhf_lab {command}")
    if command in {"pretrain", "sft", "reward", "ppo", "evaluate"}:
        assert "--scale {ci,laptop,gpu}" in result.stdout


def test_evaluate_versus_prints_every_documented_field_as_json():
    result = run_cli("evaluate", "--policy", SHIPPED / "sft", "--versus", SHIPPED / "base", "--json", "--scale", "ci")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert BEHAVIOUR_FIELDS | VERSUS_FIELDS <= set(figures)
    for key in BEHAVIOUR_FIELDS - {"mean_score"} | VERSUS_FIELDS:
        assert 0.0 <= figures[key] <= 1.0, (key, figures[key])
    assert figures["n_answers"] == 90  # ci: 10 held-out prompts per family
    # The opponent's own figures come along, and SFT clearly beats the base model.
    assert BEHAVIOUR_FIELDS <= set(figures["versus"])
    assert figures["mean_score"] > figures["versus"]["mean_score"]
    assert figures["win_rate"] > 0.5


def test_unknown_scale_lists_the_valid_ones():
    as_option = assert_clean_error(run_cli("evaluate", "--policy", SHIPPED / "sft", "--scale", "huge"))
    as_variable = assert_clean_error(run_cli("evaluate", "--policy", SHIPPED / "sft", env={"RLHF_LAB_SCALE": "huge"}))
    for message in (as_option, as_variable):
        assert "huge" in message
        assert all(scale in message for scale in ("ci", "laptop", "gpu")), message


def test_missing_checkpoint_says_where_it_looked_and_how_to_make_one(tmp_path):
    # No artifacts and no shipped checkpoints: PPO's default SFT policy cannot be found.
    empty_artifacts, empty_data = tmp_path / "artifacts", tmp_path / "data"
    empty_artifacts.mkdir()
    empty_data.mkdir()
    result = run_cli("ppo", "--scale", "ci", "--out", tmp_path / "ppo",
                     env={"RLHF_LAB_ARTIFACTS": str(empty_artifacts), "RLHF_LAB_DATA": str(empty_data)})
    message = assert_clean_error(result)
    assert str(empty_artifacts / "sft") in message and str(empty_data / "checkpoints" / "sft") in message
    assert "python -m rlhf_lab sft" in message


def test_missing_policy_directory_says_where_it_looked(tmp_path):
    message = assert_clean_error(run_cli("evaluate", "--policy", tmp_path / "nowhere", "--scale", "ci"))
    assert str(tmp_path / "nowhere") in message


def test_malformed_sft_data_names_file_line_and_field(tmp_path):
    bad = tmp_path / "demos.jsonl"
    bad.write_text('{"prompt": "hello!", "completion": "hello! how can i help?"}\n'
                   '{"prompt": "what is 1 plus 1?", "completion": 2}\n')
    result = run_cli("sft", "--policy", SHIPPED / "base", "--data", bad, "--scale", "ci", "--steps", "2",
                     "--out", tmp_path / "sft")
    message = assert_clean_error(result)
    assert str(bad) in message and "line 2" in message and "'completion'" in message
    assert not (tmp_path / "sft" / "model.safetensors").exists()


@pytest.mark.slow
def test_pretrain_writes_a_checkpoint_with_metrics_and_history(tmp_path):
    out = tmp_path / "base"
    result = run_cli("pretrain", "--scale", "ci", "--steps", "5", "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.bin")), "checkpoints are safetensors only"
    metrics = json.loads((out / "metrics.json").read_text())
    assert BEHAVIOUR_FIELDS | {"final_loss", "train_seconds"} <= set(metrics)
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,loss")
    assert [line.split(",")[0] for line in history[1:]] == ["0", "4"]  # logged at the first and last step
    assert "pretrain done" in result.stdout
