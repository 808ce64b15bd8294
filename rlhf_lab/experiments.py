"""Guided experiments: the learner turns a knob, predicts, runs, and reads what changed.

A lesson's experiment cell starts with its knobs, written as constants with their defaults:

    PTX_COEF = 8.0  # <- try 0 (no SFT term) and 32

and ends with checks of what the lesson claims at the defaults. At the defaults a false claim is a
bug in the lesson, so it must fail loudly; with a knob turned, the claim may well stop holding --
that is the point of the experiment -- and the learner should read *what* changed, not an
`AssertionError`. `expect` does both:

    at_default = knobs_at_default(PTX_COEF=(PTX_COEF, 8.0))
    expect(ppo_arithmetic >= sft_arithmetic - 0.05, "PPO-ptx keeps SFT's sums", at_default,
           f"arithmetic {sft_arithmetic:.0%} -> {ppo_arithmetic:.0%}")
"""

from __future__ import annotations


def knobs_at_default(**knobs: tuple[object, object]) -> bool:
    """True when every knob holds its default: `knobs_at_default(BETA=(BETA, 0.1), N=(N, 8))`.

    Prints the knobs that were turned, so the learner sees which setting the results below are for.
    """
    turned = {name: value for name, (value, default) in knobs.items() if value != default}
    if turned:
        settings = ", ".join(f"{name} = {value!r} (default {knobs[name][1]!r})" for name, value in turned.items())
        print(f"Experiment: {settings}.")
    return not turned


def expect(holds: bool, claim: str, at_default: bool, measured: str = "") -> bool:
    """Check a claim of the lesson after an experiment.

    At the defaults a false claim raises AssertionError (the lesson would be telling an untruth).
    With a knob turned it prints, in one line, whether the claim still holds and what was
    measured. Returns whether it holds.
    """
    detail = f" ({measured})" if measured else ""
    if holds:
        print(f"✓ {claim}{detail}")
    elif at_default:
        raise AssertionError(f"at the lesson's default settings, this should hold but does not: {claim}{detail}")
    else:
        print(f"✗ with your settings this no longer holds: {claim}{detail}")
    return bool(holds)
