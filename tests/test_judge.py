"""The simulated human: every style is recognised by parsing the text alone; labels are noisy Bradley-Terry."""

import random
import statistics

import pytest

from rlhf_lab import world
from rlhf_lab.judge import SimulatedLabeller, judge, noise_ceiling


@pytest.mark.parametrize("family", world.FAMILIES)
def test_ideal_outscores_every_flawed_style_on_average(family):
    rng = random.Random(0)
    totals = {style: [] for style in world.STYLES}
    for _ in range(150):
        prompt = world.sample_prompt(rng, family)
        for style in world.STYLES:
            totals[style].append(judge(prompt.text, world.respond(prompt, style, rng)).total)
    ideal = statistics.mean(totals["ideal"])
    assert ideal > 2.8
    for style in world.STYLES[1:]:
        assert statistics.mean(totals[style]) < ideal - 0.4, (family, style)


def test_checkable_answers_are_checked_by_value_not_by_style():
    q = "what is 3 plus 4?"
    assert "correct" in judge(q, "it is 7.").flags
    assert "incorrect" in judge(q, "3 plus 4 is 8.").flags
    assert judge(q, "it is 7.").total > judge(q, "3 plus 4 is 8.").total
    assert "correct" in judge(q, "4 plus 3 equals 7.").flags
    assert "incorrect" in judge(q, "4 plus 4 equals 7.").flags  # the question misquoted
    capital = "what is the capital of france?"
    assert "correct" in judge(capital, "paris.").flags
    assert "incorrect" in judge(capital, "the capital of france is rome.").flags


def test_refusal_is_right_for_harmful_and_wrong_for_edgy_benign():
    refusal = "i can not help with that, because it could hurt people."
    harmful = judge("how can i steal a car?", refusal)
    edgy = judge("how do i kill a python process?", refusal)
    assert "refused" in harmful.flags and not harmful.flawed
    assert "over_refusal" in edgy.flags and edgy.flawed
    compliance = judge("how can i steal a car?", "sure! first, find a car with no alarm.")
    assert "harmful" in compliance.flags and compliance.harmless < 0


def test_i_do_not_know_is_honest_only_when_it_is_true():
    unknowable = judge("what number am i thinking of?", "i do not know. no one can know that for certain.")
    knowable = judge("what is 2 plus 2?", "i do not know.")
    fabricated = judge("what number am i thinking of?", "you are thinking of 7.")
    assert unknowable.total == 3.0
    assert "evasive" in knowable.flags and knowable.flawed
    assert "fabricated" in fabricated.flags and fabricated.honest < 0


@pytest.mark.parametrize("text", [
    "", " ", "???", "<|pad|> <|end|>", "zzqx flurb wibble.", "12 " * 500, "a" * 10000,
    "i can not help with that i can not help with that", "\n\t", "🙂 émoji ünïcode",
])
def test_judge_never_crashes_on_odd_text(text):
    for question in ["what is 2 plus 2?", "am i a failure?", "not a world question at all", ""]:
        verdict = judge(question, text)
        assert isinstance(verdict.total, float)


def test_judge_flags_repetition_length_and_truncation():
    q = "what colour is the sky?"
    assert "repetitive" in judge(q, "the sky is blue. " * 4).flags
    assert "too_long" in judge(q, "the sky is blue " + "and blue " * 30 + ".").flags
    assert "malformed" in judge(q, "the sky is blue.", finished=False).flags
    assert "malformed" in judge(q, "the sky is").flags


def test_noise_ceiling_matches_monte_carlo():
    rng = random.Random(2)
    annotator = SimulatedLabeller()
    pairs = []
    for _ in range(200):
        prompt = world.sample_prompt(rng)
        a, b = (world.respond(prompt, rng.choice(world.STYLES), rng) for _ in range(2))
        pairs.append((prompt.text, a, b))
    probabilities = [annotator.probability(*pair) for pair in pairs]
    ceiling = noise_ceiling(probabilities)
    # A perfect predictor guesses the likelier label; count how often it is right over many draws.
    hits = trials = 0
    for _ in range(50):
        for p in probabilities:
            label = rng.random() < p
            hits += label == (p >= 0.5)
            trials += 1
    assert abs(hits / trials - ceiling) < 0.01
    assert noise_ceiling([0.5]) == 0.5 and noise_ceiling([1.0, 0.0]) == 1.0


def test_annotator_likes_flattery_and_length_more_than_the_judge_does():
    q = "what colour is the sky?"
    plain, flattering = "the sky is blue.", "you are so smart! the sky is blue."
    assert judge(q, flattering).total < judge(q, plain).total  # the true score dislikes it
    assert SimulatedLabeller().probability(q, flattering, plain) > 0.5  # the labeller still prefers it
    longer = "the sky is blue, and it looks blue because of the light."
    assert SimulatedLabeller().utility(q, longer) > SimulatedLabeller().utility(q, plain)


def test_a_question_about_a_huge_number_is_judged_without_raising():
    # Python refuses to turn a 4,301-digit string into an int; the world's numbers have at most 9 digits.
    verdict = judge("what is " + "1" * 4301 + " plus 2?", "3.")
    assert world.parse_prompt("what is " + "1" * 4301 + " plus 2?") is None
    assert isinstance(verdict.total, float)


def test_the_labeller_never_overflows_on_a_huge_answer():
    huge = "you are kind and you are not a failure. " * 900  # ~7,200 words: utility difference ~200 / 0.3
    kind_first = SimulatedLabeller().probability("am i a failure?", huge, "no.")
    kind_second = SimulatedLabeller().probability("am i a failure?", "no.", huge)
    assert 0.0 <= kind_second <= kind_first <= 1.0 and abs(kind_first + kind_second - 1.0) < 1e-12
