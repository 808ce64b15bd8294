"""The experiments of lesson 06: the β sweep, the weak-leash run, the adaptive controller, and their summaries."""

import math

import pandas as pd
import pytest

from rlhf_lab import reward_hacking


@pytest.fixture
def models(sft, reward_model):
    return (*sft, reward_model)


def test_overoptimisation_summary_finds_the_peak_of_the_true_score():
    curve = pd.DataFrame({"iteration": [0, 5, 10, 15, 20], "true_score": [2.5, 2.8, 2.6, 2.2, 2.0],
                          "reward": [0.0, 0.2, 0.3, 0.5, 0.7], "kl": [0.0, 1.0, 2.0, 4.0, 9.0]})
    summary = reward_hacking.overoptimisation_summary(curve, smooth=1)
    assert summary["peak_iteration"] == 5 and summary["peak_true"] == 2.8 and summary["peak_reward"] == 0.2
    assert summary["true_drop"] == pytest.approx(0.8) and summary["reward_gain_after_peak"] == pytest.approx(0.5)
    smoothed = reward_hacking.overoptimisation_summary(curve, smooth=3)
    # Centred means of 3 measurements: 2.633 (iteration 5), 2.533 (10), 2.267 (15); the ends have no full window.
    assert smoothed["peak_iteration"] == 5 and smoothed["peak_true"] == pytest.approx((2.5 + 2.8 + 2.6) / 3)
    assert smoothed["final_true"] == pytest.approx((2.6 + 2.2 + 2.0) / 3)
    assert smoothed["final_reward"] == pytest.approx((0.3 + 0.5 + 0.7) / 3)


def test_behaviour_change_names_what_grew():
    columns = {name: [0.0, 0.0] for name in reward_hacking.HACK_COLUMNS}
    curve = pd.DataFrame({"iteration": [10, 80], **columns})
    curve["flattery"] = [0.1, 0.6]
    curve["words"] = [15.0, 18.0]
    table = reward_hacking.behaviour_change(curve, 10, 80)
    grown = table[table["column"] != "words"]["growth"].idxmax()
    assert grown == "flattery (share)"
    assert table.loc["longer answers (words)", "growth"] == pytest.approx(3.0)


def tiny_config(**overrides) -> reward_hacking.SweepConfig:
    return reward_hacking.sweep_config("ci", **{**dict(betas=(0.0, 1.0), iterations=2, batch_size=8,
                                                       frontier_per_family=1,
                                              leash_iterations=4, leash_batch_size=8, measure_every=2,
                                              curve_per_family=1, adaptive_iterations=3), **overrides})


@pytest.mark.slow
def test_beta_sweep_gives_one_frontier_point_per_beta(models):
    policy, tokenizer, reward_model = models
    frontier, histories, answers = reward_hacking.beta_sweep(policy, reward_model, tokenizer, tiny_config(), "ci",
                                                    progress=False)
    assert list(frontier["beta"]) == [0.0, 1.0]
    for column in ["reward", "true_score", "kl", "kl_k3", "words", "flattery", "seconds"]:
        assert frontier[column].map(math.isfinite).all()
    assert sorted(histories["beta_setting"].unique()) == [0.0, 1.0] and len(histories) == 4
    assert (histories.groupby("beta_setting")["beta"].nunique() == 1).all(), "a fixed β stays fixed"
    assert len(answers) == 2 * 9 and sorted(answers["beta_setting"].unique()) == [0.0, 1.0]  # 9 families
    mean_true = answers.groupby("beta_setting")["total"].mean()
    assert list(mean_true) == list(frontier["true_score"])


@pytest.mark.slow
def test_weak_leash_run_is_measured_from_the_start_every_few_iterations(models):
    policy, tokenizer, reward_model = models
    curve, answers, history = reward_hacking.weak_leash_run(policy, reward_model, tokenizer, tiny_config(), "ci",
                                                            progress=False)
    assert list(curve["iteration"]) == [0, 2, 4]
    assert curve["kl"].iloc[0] == 0, "iteration 0 is the SFT policy itself"
    assert (curve["sqrt_kl"] == curve["kl"].clip(lower=0) ** 0.5).all()
    assert sorted(answers["iteration"].unique()) == [0, 2, 4] and len(history) == 4
    assert (history["beta"] == 0).all()


@pytest.mark.slow
def test_adaptive_run_moves_beta_by_the_controller_rule(models):
    policy, tokenizer, reward_model = models
    cfg = tiny_config(adaptive_beta=0.1, adaptive_target=0.5, adaptive_horizon=40)
    history = reward_hacking.adaptive_kl_run(policy, reward_model, tokenizer, cfg, "ci", progress=False)
    betas = list(history["beta"])
    for i in range(len(betas) - 1):
        error = min(max(history["kl"].iloc[i] / 0.5 - 1, -0.2), 0.2)
        assert betas[i + 1] == pytest.approx(betas[i] * (1 + error * cfg.batch_size / 40))
