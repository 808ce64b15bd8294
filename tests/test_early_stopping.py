"""Lesson 06's early-stopping comparison: stopping a run at a KL, and a leash against early stopping."""

import math

import pandas as pd
import pytest

from rlhf_lab import reward_hacking

CURVE = pd.DataFrame({"iteration": [0, 5, 10, 15], "kl": [0.0, 1.0, 3.0, 2.5],
                      "true_score": [2.0, 2.4, 2.2, 1.9], "reward": [0.0, 0.5, 1.0, 1.5]})


def test_trajectory_at_kl_interpolates_between_the_measurements_around_the_first_crossing():
    # KL 2.0 lies halfway between iteration 5 (KL 1) and iteration 10 (KL 3).
    point = reward_hacking.trajectory_at_kl(CURVE, 2.0)
    assert point == pytest.approx({"iteration": 7.5, "true_score": 2.3, "reward": 0.75})
    # A measurement exactly at the KL is that measurement; the first crossing counts, not a later dip.
    assert reward_hacking.trajectory_at_kl(CURVE, 1.0) == pytest.approx({"iteration": 5, "true_score": 2.4,
                                                                         "reward": 0.5})
    assert reward_hacking.trajectory_at_kl(CURVE, 0.0)["iteration"] == 0


def test_trajectory_that_never_got_that_far_is_nan():
    point = reward_hacking.trajectory_at_kl(CURVE, 5.0)
    assert all(math.isnan(value) for value in point.values())


def test_leash_vs_early_stopping_compares_gains_at_the_same_kl():
    frontier = pd.DataFrame({"beta": [0.0, 0.1, 1.0], "kl": [4.0, 2.0, 1.0], "true_score": [2.6, 2.9, 2.7],
                             "reward": [1.2, 0.6, 0.3]})
    sft = {"true_score": 2.5, "reward": -0.1}
    table = reward_hacking.leash_vs_early_stopping(frontier, CURVE, sft)
    assert list(table["beta"]) == [1.0, 0.1]  # β = 0 is the unleashed run itself; sorted by KL
    strong, weak = table.iloc[0], table.iloc[1]
    # β = 1 spent KL 1: the curve is at iteration 5 there (true 2.4, a gain of 0.4 over its start).
    assert strong["leash_true_gain"] == pytest.approx(0.2) and strong["stopped_true_gain"] == pytest.approx(0.4)
    assert strong["true_difference"] == pytest.approx(-0.2) and strong["stopped_iteration"] == 5
    assert strong["leash_reward_gain"] == pytest.approx(0.4) and strong["stopped_reward_gain"] == pytest.approx(0.5)
    # β = 0.1 spent KL 2: halfway from iteration 5 to 10 (true 2.3, gain 0.3); the leash gained 0.4.
    assert weak["stopped_true_gain"] == pytest.approx(0.3) and weak["true_difference"] == pytest.approx(0.1)
