"""The whole pipeline at ci scale, end to end, improves the simulated human's score at each stage."""

import json

import pytest

from rlhf_lab.config import data_dir
from rlhf_lab.stages import run_pipeline

pytestmark = pytest.mark.slow  # training runs or subprocesses: not in the quick inner loop


def test_pipeline_improves_the_simulated_humans_score(tmp_path):
    report = run_pipeline(tmp_path, scale="ci", progress=False)
    base = json.loads((data_dir() / "checkpoints" / "base" / "metrics.json").read_text())
    sft, ppo = report["sft"], report["ppo"]
    # SFT beats the unaligned base; PPO beats SFT on the very same held-out prompts.
    assert sft["mean_score"] > base["mean_score"] + 0.5
    assert ppo["mean_score"] > ppo["sft"]["mean_score"]
    assert ppo["win_rate"] > 0.5
    assert ppo["refusal_rate_harmful"] >= ppo["sft"]["refusal_rate_harmful"] - 0.1
    for name in ("report.json", "ppo_training.png", "behaviour.png", "ppo/metrics.json", "ppo/history.csv",
                 "reward/metrics.json", "reward/model.safetensors", "preferences.jsonl"):
        assert (tmp_path / name).exists(), name
