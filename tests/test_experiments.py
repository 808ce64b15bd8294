"""Guided experiments: a claim fails loudly at the lesson's defaults and only reports when a knob is turned."""

import pytest

from rlhf_lab.experiments import expect, knobs_at_default


def test_at_the_defaults_a_false_claim_is_an_error_and_a_true_one_a_tick(capsys):
    assert knobs_at_default(BETA=(0.1, 0.1), N=(8, 8))
    assert expect(True, "PPO beats SFT", at_default=True, measured="win rate 0.9")
    assert "✓ PPO beats SFT (win rate 0.9)" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="PPO beats SFT"):
        expect(False, "PPO beats SFT", at_default=True)


def test_with_a_knob_turned_a_false_claim_is_reported_not_raised(capsys):
    at_default = knobs_at_default(BETA=(0.0, 0.1), N=(8, 8))
    assert not at_default
    assert "BETA = 0.0 (default 0.1)" in capsys.readouterr().out
    assert expect(False, "the true score stays above SFT's", at_default, "2.1 vs 2.6") is False
    assert "no longer holds: the true score stays above SFT's (2.1 vs 2.6)" in capsys.readouterr().out
