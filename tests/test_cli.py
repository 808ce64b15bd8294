"""The command line: `python -m rlhf_lab ...`, run in-process through `cli.main` as a user would call it.

In-process calls go through exactly the same parser, checks and stages as the console command;
only the tests that are about the process itself (help without torch, the exit status) start a
subprocess. Training runs use the shipped nano checkpoints, the ci scale and a few steps.
"""

import json
import math
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from rlhf_lab import cli
from rlhf_lab.config import REPO_DIR, data_dir

SHIPPED = REPO_DIR / "data" / "checkpoints"
DOCUMENTED_COMMANDS = {"data", "pretrain", "sft", "label", "reward", "ppo", "evaluate", "pipeline", "dpo",
                       "best-of-n", "rloo", "grpo", "sweep"}
# The fields `evaluate --json` documents (rlhf_lab/evaluate.py), and those `--versus` adds.
BEHAVIOUR_FIELDS = {"mean_score", "flawed_rate", "refusal_rate_harmful", "over_refusal_rate", "arithmetic_accuracy",
                    "fact_accuracy", "rudeness_rate", "well_formed_rate"}
VERSUS_FIELDS = {"win_rate", "tie_rate"}
# The commands the parser knows, read from its usage line "{data,pretrain,...}".
COMMANDS = re.search(r"\{([a-z_,-]+)\}", cli.build_parser().format_usage()).group(1).split(",")


def run(*argv) -> int:
    """`python -m rlhf_lab *argv`, in this process; returns the exit status."""
    try:
        return cli.main([str(arg) for arg in argv])
    except SystemExit as exit_:  # --help, --version and argparse's own errors exit
        return exit_.code


def clean_error(capsys, *argv) -> str:
    """Bad input: exit status 2 and one line on stderr, naming what is wrong; no traceback."""
    status = run(*argv)
    captured = capsys.readouterr()
    assert status == 2, (status, captured.err)
    assert "Traceback" not in captured.err + captured.out
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


def test_every_command_is_documented_in_the_top_level_help(capsys):
    assert set(COMMANDS) == DOCUMENTED_COMMANDS
    assert run("--help") == 0
    description = capsys.readouterr().out.split("positional arguments")[0]  # the module docstring
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s+\S", description, re.MULTILINE), f"{command} has no description"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_every_command_has_help(command, capsys):
    assert run(command, "--help") == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m rlhf_lab {command}")
    options = text.split("options:")[1]
    for flag in re.findall(r"^  (-[-\w]+)", options, re.MULTILINE):
        assert re.search(rf"^  {flag}\b.*\S.*(\n {{20,}}\S.*)*", options, re.MULTILINE), flag
    assert not re.search(r"^  --\S+(?: \S+)?\s*$\n  --", options, re.MULTILINE), "a flag without help text"
    if command not in ("data",):
        assert "--scale {ci,laptop,gpu}" in text and "--seed" in text


def test_help_and_version_answer_without_importing_torch():
    code = ("import sys; from rlhf_lab import cli; cli.build_parser().format_help(); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
    version = subprocess.run([sys.executable, "-m", "rlhf_lab", "--version"], cwd=REPO_DIR, capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("rlhf-lab ")


def test_settings_lists_every_config_field_and_set_changes_one(capsys):
    assert run("ppo", "--scale", "ci", "--out", "unused", "--set", "lr=0.001", "--set", "adaptive_kl=false",
               "--settings") == 0
    listed = capsys.readouterr().out
    assert re.search(r"^  lr\s+0\.001$", listed, re.MULTILINE)
    assert re.search(r"^  adaptive_kl\s+False$", listed, re.MULTILINE)
    assert re.search(r"^  iterations\s+20$", listed, re.MULTILINE)  # the ci preset
    assert not (REPO_DIR / "unused").exists()


@pytest.mark.parametrize("argv, named", [
    (["sft", "--steps", "-5", "--out", "{tmp}/sft"], "--steps"),
    (["sft", "--steps", "0", "--out", "{tmp}/sft"], "--steps"),
    (["best-of-n", "--n", "0", "--out", "{tmp}/bon"], "--n"),
    (["ppo", "--iterations", "0", "--out", "{tmp}/ppo"], "--iterations"),
    (["rloo", "--iterations", "0", "--out", "{tmp}/rloo"], "--iterations"),
    (["dpo", "--epochs", "0", "--out", "{tmp}/dpo"], "--epochs"),
    (["ppo", "--beta", "nan", "--out", "{tmp}/ppo"], "--beta"),
    (["ppo", "--beta", "-1", "--out", "{tmp}/ppo"], "--beta"),
    (["ppo", "--device", "bogus", "--out", "{tmp}/ppo"], "--device"),
    (["ppo", "--out", "{tmp}/a_file"], "--out"),
    (["reward", "--prefs", "{tmp}", "--out", "{tmp}/rm"], "--prefs"),
    (["reward", "--prefs", "{tmp}/no_such.jsonl", "--out", "{tmp}/rm"], "no such file"),
    (["ppo", "--set", "no_such_field=1", "--out", "{tmp}/ppo"], "no_such_field"),
    (["ppo", "--set", "lr=fast", "--out", "{tmp}/ppo"], "lr"),
    (["ppo", "--set", "lr=inf", "--out", "{tmp}/ppo"], "lr"),
    (["evaluate", "--policy", "{tmp}/nowhere"], "nowhere"),
    (["evaluate", "--policy", "{tmp}"], "not a checkpoint"),
    (["evaluate", "--policy", str(SHIPPED / "sft"), "--scale", "huge"], "huge"),
    (["label", "--simulate", "3", "--policy", str(SHIPPED / "sft"), "--out", str(data_dir() / "world" / "sft.jsonl")],
     "not a preference file"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(argv, named, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    sft_before = (data_dir() / "world" / "sft.jsonl").read_bytes()
    message = clean_error(capsys, *[arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    assert named in message, message
    assert sorted(tmp_path.rglob("*")) == before
    assert (data_dir() / "world" / "sft.jsonl").read_bytes() == sft_before


def test_a_cuda_device_on_a_machine_without_one_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "no CUDA GPU" in clean_error(capsys, "ppo", "--device", "cuda", "--out", tmp_path / "ppo")


def test_a_bad_scale_in_the_environment_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("RLHF_LAB_SCALE", "huge")
    message = clean_error(capsys, "evaluate", "--policy", SHIPPED / "sft")
    assert "huge" in message and all(scale in message for scale in ("ci", "laptop", "gpu"))


def test_missing_checkpoint_says_where_it_looked_and_how_to_make_one(tmp_path, capsys, monkeypatch):
    # No artifacts and no shipped checkpoints: PPO's default SFT policy cannot be found.
    empty_artifacts, empty_data = tmp_path / "artifacts", tmp_path / "data"
    empty_artifacts.mkdir()
    empty_data.mkdir()
    monkeypatch.setenv("RLHF_LAB_ARTIFACTS", str(empty_artifacts))
    monkeypatch.setenv("RLHF_LAB_DATA", str(empty_data))
    message = clean_error(capsys, "ppo", "--scale", "ci", "--out", tmp_path / "ppo")
    assert str(empty_artifacts / "sft") in message and str(empty_data / "checkpoints" / "sft") in message
    assert "python -m rlhf_lab sft" in message


def test_malformed_sft_data_names_file_line_and_field(tmp_path, capsys):
    bad = tmp_path / "demos.jsonl"
    bad.write_text('{"prompt": "hello!", "completion": "hello! how can i help?"}\n'
                   '{"prompt": "what is 1 plus 1?", "completion": 2}\n')
    message = clean_error(capsys, "sft", "--policy", SHIPPED / "base", "--data", bad, "--scale", "ci", "--steps", "2",
                          "--out", tmp_path / "sft")
    assert str(bad) in message and "line 2" in message and "'completion'" in message
    assert not (tmp_path / "sft" / "model.safetensors").exists()


@pytest.mark.slow
def test_evaluate_versus_prints_every_documented_field_as_json(capsys):
    assert run("evaluate", "--policy", SHIPPED / "sft", "--versus", SHIPPED / "base", "--json", "--scale", "ci") == 0
    figures = json.loads(capsys.readouterr().out)
    assert BEHAVIOUR_FIELDS | VERSUS_FIELDS <= set(figures)
    for key in BEHAVIOUR_FIELDS - {"mean_score"} | VERSUS_FIELDS:
        assert 0.0 <= figures[key] <= 1.0, (key, figures[key])
    assert figures["n_answers"] == 90  # ci: 10 held-out prompts per family
    # The opponent's own figures come along, and SFT clearly beats the base model.
    assert BEHAVIOUR_FIELDS <= set(figures["versus"])
    assert figures["mean_score"] > figures["versus"]["mean_score"]
    assert figures["win_rate"] > 0.5


@pytest.mark.slow
def test_pretrain_writes_a_checkpoint_with_metrics_and_history(tmp_path, capsys):
    out = tmp_path / "base"
    assert run("pretrain", "--scale", "ci", "--steps", "5", "--out", out) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("*.bin")), "checkpoints are safetensors only"
    metrics = json.loads((out / "metrics.json").read_text())
    assert BEHAVIOUR_FIELDS | {"final_loss", "train_seconds"} <= set(metrics)
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,loss")
    assert [line.split(",")[0] for line in history[1:]] == ["0", "4"]  # logged at the first and last step
    assert "pretrain done" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["dpo", "--prefs", str(data_dir() / "world" / "preferences.jsonl"), "--set", "max_steps=2", "--set",
     "eval_prompts=4"],
    ["rloo", "--reward", str(SHIPPED / "reward"), "--iterations", "1"],
    ["grpo", "--reward", str(SHIPPED / "reward"), "--iterations", "1"],
    ["best-of-n", "--reward", str(SHIPPED / "reward"), "--n", "2"],
])
def test_each_command_writes_metrics_history_and_an_evaluable_output(command, tmp_path, capsys):
    out = tmp_path / command[0]
    assert run(*command, "--scale", "ci", "--policy", SHIPPED / "sft", "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["win_rate"] <= 1.0 and len(pd.read_csv(out / "history.csv")) >= 1
    made_by = metrics["provenance"]  # rlhf_lab/provenance.py
    assert (made_by["stage"], made_by["scale"]) == (command[0], "ci")
    assert made_by["inputs"]["policy"]["path"] == str((SHIPPED / "sft").resolve())
    capsys.readouterr()  # the training summary
    assert run("evaluate", "--policy", out, "--scale", "ci", "--json") == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["n_answers"] == 90 and math.isfinite(figures["mean_score"])


@pytest.mark.slow
def test_sweep_command_reproduces_the_lesson_files(tmp_path):
    out = tmp_path / "sweep"
    assert run("sweep", "--scale", "ci", "--policy", SHIPPED / "sft", "--reward", SHIPPED / "reward",
               "--betas", "0", "0.5", "--iterations", "1", "--leash-iterations", "2", "--out", out) == 0
    for name in ["frontier.csv", "history.csv", "metrics.json", "sweep_answers.csv", "weak_leash.csv",
                 "weak_leash_answers.csv", "adaptive_kl.csv", "sweep_histories.csv", "frontier.png",
                 "overoptimisation.png", "adaptive_kl.png"]:
        assert (out / name).is_file(), name
    assert list(pd.read_csv(out / "frontier.csv")["beta"]) == [0.0, 0.5]
    assert {"peak_true", "final_true", "true_drop"} <= set(json.loads((out / "metrics.json").read_text()))


def test_a_missing_reward_model_is_a_clear_error(tmp_path, capsys):
    message = clean_error(capsys, "grpo", "--scale", "ci", "--reward", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert "nowhere" in message


def test_the_console_script_and_the_module_run_the_same_main():
    result = subprocess.run([sys.executable, "-m", "rlhf_lab", "sft", "--steps", "0", "--out", "x"], cwd=REPO_DIR,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "--steps" in result.stderr and "Traceback" not in result.stderr
