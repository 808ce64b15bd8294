"""Measuring policies for the KL frontier, the sweep experiments, and the new command-line commands."""

import copy
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rlhf_lab import cli, sweep, world
from rlhf_lab.config import data_dir
from rlhf_lab.policy import generate, load_policy
from rlhf_lab.reward import RewardModel, score_answers
from rlhf_lab.tokenizer import format_prompt

SHIPPED = data_dir() / "checkpoints"
QUESTIONS = ["what is 2 plus 3?", "am i a failure?", "how can i steal a car?", "hello!", "what colour is the sky?",
             "what number am i thinking of?", "how do i kill a python process?", "write a short poem about the sea."]


@pytest.fixture(scope="module")
def models():
    policy, tokenizer = load_policy(SHIPPED / "sft")
    reward_model, _ = RewardModel.load(SHIPPED / "reward")
    return policy, tokenizer, reward_model


def perturbed(policy, seed: int = 0, size: float = 0.05):
    other = copy.deepcopy(policy)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(size * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed)))
    return other


def test_a_policy_measured_against_itself_has_zero_kl(models):
    policy, tokenizer, reward_model = models
    frame = sweep.measure_policy(policy, copy.deepcopy(policy), tokenizer, QUESTIONS, reward_model)
    assert (frame["kl"] == 0).all() and (frame["kl_k3"] == 0).all()


def test_measured_kl_is_the_summed_log_ratio_at_the_sampling_temperature(models):
    policy, tokenizer, _ = models
    moved = perturbed(policy, size=0.02)
    temperature, seed = 0.7, 1234
    frame = sweep.measure_policy(moved, policy, tokenizer, QUESTIONS, temperature=temperature, max_new_tokens=40,
                                 seed=seed)
    assert frame["kl"].abs().max() > 0.01
    # The same samples again (same seed), then every answer's KL the long way: one unpadded row each.
    rollout = generate(moved, tokenizer, QUESTIONS, 40, temperature, torch.Generator().manual_seed(seed))
    assert rollout.texts == list(frame["answer"])
    for i, question in enumerate(QUESTIONS):
        prompt_ids = tokenizer.encode(format_prompt(question))
        answer_ids = rollout.response_ids[i][rollout.response_mask[i].bool()].tolist()
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logp = F.log_softmax(moved(input_ids=ids).logits[0].double() / temperature, -1)
            ref_logp = F.log_softmax(policy(input_ids=ids).logits[0].double() / temperature, -1)
        positions = range(len(prompt_ids), ids.shape[1])  # token t is predicted at t - 1
        log_ratios = [(ref_logp[t - 1, ids[0, t]] - logp[t - 1, ids[0, t]]).item() for t in positions]
        assert frame["kl"].iloc[i] == pytest.approx(-sum(log_ratios), abs=1e-3)
        assert frame["kl_k3"].iloc[i] == pytest.approx(sum(math.expm1(x) - x for x in log_ratios), abs=1e-3)


def test_measured_scores_are_the_judge_and_the_reward_model(models):
    policy, tokenizer, reward_model = models
    frame = sweep.measure_policy(policy, policy, tokenizer, QUESTIONS, reward_model)
    for _, row in frame.iterrows():
        assert row["total"] == world.judge(row["prompt"], row["answer"], row["finished"]).total
    finished = frame[frame["finished"]]
    rescored = score_answers(reward_model, tokenizer, list(finished["prompt"]), list(finished["answer"]))
    assert torch.allclose(torch.tensor(finished["reward"].to_numpy(), dtype=torch.float32), rescored, atol=1e-4)


def test_frontier_point_means_and_shares():
    frame = pd.DataFrame({
        "prompt": ["a", "b", "c", "d"], "family": ["harmful", "harmful", "greeting", "greeting"],
        "answer": ["x"] * 4, "finished": [True, True, True, False], "total": [3.0, 1.0, 2.0, 0.0],
        "flags": ["refused", "harmful", "flattery,too_long", "malformed,repetitive"], "words": [4, 10, 20, 30],
        "kl": [0.0, 1.0, 2.0, 5.0], "kl_k3": [0.0, 1.0, 1.0, 2.0], "reward": [1.0, 2.0, 3.0, 4.0],
        "flattery": [0, 0, 2, 0], "flawed": [False, True, False, True],
    })
    point = sweep.frontier_point(frame)
    assert point["true_score"] == 1.5 and point["reward"] == 2.5 and point["kl"] == 2.0 and point["kl_k3"] == 1.0
    assert point["words"] == 16.0 and point["flattery"] == 0.25 and point["too_long"] == 0.25
    assert point["repetitive"] == 0.25 and point["padded"] == 0.0 and point["finished_rate"] == 0.75
    assert point["refusal_rate_harmful"] == 0.5 and point["harmful_not_refused"] == 0.5


def test_overoptimisation_summary_finds_the_peak_of_the_true_score():
    curve = pd.DataFrame({"iteration": [0, 5, 10, 15, 20], "true_score": [2.5, 2.8, 2.6, 2.2, 2.0],
                          "reward": [0.0, 0.2, 0.3, 0.5, 0.7], "kl": [0.0, 1.0, 2.0, 4.0, 9.0]})
    summary = sweep.overoptimisation_summary(curve, smooth=1)
    assert summary["peak_iteration"] == 5 and summary["peak_true"] == 2.8 and summary["peak_reward"] == 0.2
    assert summary["true_drop"] == pytest.approx(0.8) and summary["reward_gain_after_peak"] == pytest.approx(0.5)
    smoothed = sweep.overoptimisation_summary(curve, smooth=3)
    # Centred means of 3 measurements: 2.633 (iteration 5), 2.533 (10), 2.267 (15); the ends have no full window.
    assert smoothed["peak_iteration"] == 5 and smoothed["peak_true"] == pytest.approx((2.5 + 2.8 + 2.6) / 3)
    assert smoothed["final_true"] == pytest.approx((2.6 + 2.2 + 2.0) / 3)
    assert smoothed["final_reward"] == pytest.approx((0.3 + 0.5 + 0.7) / 3)


def test_behaviour_change_names_what_grew():
    columns = {name: [0.0, 0.0] for name in sweep.HACK_COLUMNS}
    curve = pd.DataFrame({"iteration": [10, 80], **columns})
    curve["flattery"] = [0.1, 0.6]
    curve["words"] = [15.0, 18.0]
    table = sweep.behaviour_change(curve, 10, 80)
    grown = table[table["column"] != "words"]["growth"].idxmax()
    assert grown == "flattery (share)"
    assert table.loc["longer answers (words)", "growth"] == pytest.approx(3.0)


def tiny_config(**overrides) -> sweep.SweepConfig:
    return sweep.sweep_config("ci", **{**dict(betas=(0.0, 1.0), iterations=2, batch_size=8, frontier_per_family=1,
                                              leash_iterations=4, leash_batch_size=8, measure_every=2,
                                              curve_per_family=1, adaptive_iterations=3), **overrides})


def test_beta_sweep_gives_one_frontier_point_per_beta(models):
    policy, tokenizer, reward_model = models
    frontier, histories, answers = sweep.beta_sweep(policy, reward_model, tokenizer, tiny_config(), "ci",
                                                    progress=False)
    assert list(frontier["beta"]) == [0.0, 1.0]
    for column in ["reward", "true_score", "kl", "kl_k3", "words", "flattery", "seconds"]:
        assert frontier[column].map(math.isfinite).all()
    assert sorted(histories["beta_setting"].unique()) == [0.0, 1.0] and len(histories) == 4
    assert (histories.groupby("beta_setting")["beta"].nunique() == 1).all(), "a fixed β stays fixed"
    assert len(answers) == 2 * 9 and sorted(answers["beta_setting"].unique()) == [0.0, 1.0]  # 9 families
    mean_true = answers.groupby("beta_setting")["total"].mean()
    assert list(mean_true) == list(frontier["true_score"])


def test_weak_leash_run_is_measured_from_the_start_every_few_iterations(models):
    policy, tokenizer, reward_model = models
    curve, answers, history = sweep.weak_leash_run(policy, reward_model, tokenizer, tiny_config(), "ci", progress=False)
    assert list(curve["iteration"]) == [0, 2, 4]
    assert curve["kl"].iloc[0] == 0, "iteration 0 is the SFT policy itself"
    assert (curve["sqrt_kl"] == curve["kl"].clip(lower=0) ** 0.5).all()
    assert sorted(answers["iteration"].unique()) == [0, 2, 4] and len(history) == 4
    assert (history["beta"] == 0).all()


def test_adaptive_run_moves_beta_by_the_controller_rule(models):
    policy, tokenizer, reward_model = models
    cfg = tiny_config(adaptive_beta=0.1, adaptive_target=0.5, adaptive_horizon=40)
    history = sweep.adaptive_kl_run(policy, reward_model, tokenizer, cfg, "ci", progress=False)
    betas = list(history["beta"])
    for i in range(len(betas) - 1):
        error = min(max(history["kl"].iloc[i] / 0.5 - 1, -0.2), 0.2)
        assert betas[i + 1] == pytest.approx(betas[i] * (1 + error * cfg.batch_size / 40))


def run_command(*argv: str) -> dict:
    """Parse and run a command in-process, exactly as `python -m rlhf_lab` does."""
    args = cli.build_parser().parse_args(list(argv))
    return args.run(args)


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["dpo", "--prefs", str(data_dir() / "world" / "preferences.jsonl")],
    ["rloo", "--reward", str(SHIPPED / "reward"), "--iterations", "1"],
    ["grpo", "--reward", str(SHIPPED / "reward"), "--iterations", "1"],
    ["best-of-n", "--reward", str(SHIPPED / "reward"), "--n", "2"],
])
def test_each_command_writes_metrics_history_and_an_evaluable_output(command, tmp_path, monkeypatch):
    from rlhf_lab.evaluate import eval_config, eval_prompts
    from rlhf_lab.pipeline_beyond import sample_and_judge_output

    monkeypatch.setattr("rlhf_lab.dpo.DPO_PRESETS", {"ci": dict(max_steps=2, eval_every=10, eval_prompts=4)})
    out = tmp_path / command[0]
    metrics = run_command(*command, "--scale", "ci", "--policy", str(SHIPPED / "sft"), "--out", str(out))
    assert json.loads((out / "metrics.json").read_text())["win_rate"] == metrics["win_rate"]
    assert len(pd.read_csv(out / "history.csv")) >= 1
    cfg = eval_config("ci")
    judged = sample_and_judge_output(out, eval_prompts(cfg)[:4], cfg)
    assert len(judged) == 4 and judged["total"].map(math.isfinite).all()


@pytest.mark.slow
def test_sweep_command_reproduces_the_lesson_files(tmp_path):
    out = tmp_path / "sweep"
    metrics = run_command("sweep", "--scale", "ci", "--policy", str(SHIPPED / "sft"),
                          "--reward", str(SHIPPED / "reward"), "--betas", "0", "0.5", "--iterations", "1",
                          "--leash-iterations", "2", "--out", str(out))
    for name in ["frontier.csv", "history.csv", "metrics.json", "sweep_answers.csv", "weak_leash.csv",
                 "weak_leash_answers.csv",
                 "adaptive_kl.csv", "sweep_histories.csv", "frontier.png", "overoptimisation.png", "adaptive_kl.png"]:
        assert (out / name).is_file(), name
    assert list(pd.read_csv(out / "frontier.csv")["beta"]) == [0.0, 0.5]
    assert {"peak_true", "final_true", "true_drop"} <= set(metrics)


def test_a_missing_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reward model"):
        run_command("grpo", "--scale", "ci", "--reward", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
