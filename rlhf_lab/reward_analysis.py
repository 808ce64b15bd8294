"""What a trained reward model has learnt: accuracy, calibration, biases, and where it fails.

Lesson 04 measures its reward model against the simulated labeller, who is known exactly:

    predicted_preferences  the model's P(chosen preferred) = σ(r_chosen - r_rejected) per pair
    calibration_table      predicted against observed preference frequency, bin by bin
    bias_probe             does the model like length and flattery more than the judge does?
    gap_by_kind            which kinds of pairs (need knowledge, close calls, clear) cost accuracy
    reward_report          all of it for a set of held-out pairs (what the reward stage saves)
"""

import pandas as pd
import torch
from torch import Tensor

from rlhf_lab.judge import judge
from rlhf_lab.reward import RewardModel, bradley_terry_probability, pair_rewards, score_answers
from rlhf_lab.world import FLATTERY, Prompt, count_phrases, normalise, parse_prompt, words_of


@torch.no_grad()
def predicted_preferences(reward_model: RewardModel, tokenizer, pairs: list[dict], batch_size: int = 128) -> Tensor:
    """The reward model's P(chosen preferred) = σ(r_chosen - r_rejected) for every pair."""
    probabilities = []
    for i in range(0, len(pairs), batch_size):
        chosen_rewards, rejected_rewards = pair_rewards(reward_model, tokenizer, pairs[i:i + batch_size])
        probabilities.append(bradley_terry_probability(chosen_rewards, rejected_rewards).float().cpu())
    return torch.cat(probabilities) if probabilities else torch.zeros(0)


def calibration_table(predicted: Tensor, bins: int = 10) -> pd.DataFrame:
    """Predicted vs observed preference probability.

    Each pair is looked at from both sides (chosen first, then rejected first), so the observed
    frequency of "the first answer was preferred" in a bin can be compared with the mean
    prediction there: a calibrated model sits on the diagonal.
    """
    probabilities = torch.cat([predicted, 1 - predicted])
    observed = torch.cat([torch.ones_like(predicted), torch.zeros_like(predicted)])
    bucket = (probabilities * bins).clamp(max=bins - 1).long()
    rows = []
    for b in range(bins):
        inside = bucket == b
        if inside.any():
            rows.append({"bin": b, "predicted": probabilities[inside].mean().item(),
                         "observed": observed[inside].mean().item(), "pairs": int(inside.sum())})
    return pd.DataFrame(rows)


def _correlation(x: list[float], y: list[float]) -> float:
    return float(torch.corrcoef(torch.tensor([x, y], dtype=torch.float64))[0, 1])


def bias_probe(reward_model: RewardModel, tokenizer, prompts: list[str], answers: list[str]) -> dict[str, float]:
    """Does the reward model like length and flattery more than the simulated human does?

    Correlations over the same answers: reward vs number of words (and flattering phrases), next
    to the simulated human's total vs the same. A reward model that learned the labellers' bias
    shows a higher correlation than the true score.
    """
    rewards = score_answers(reward_model, tokenizer, prompts, answers).tolist()
    truths = [judge(p, a).total for p, a in zip(prompts, answers)]
    lengths = [len(words_of(normalise(a))) for a in answers]
    flattery = [count_phrases(normalise(a), FLATTERY) for a in answers]
    return {"length_correlation": _correlation(rewards, lengths),
            "judge_length_correlation": _correlation(truths, lengths),
            "flattery_correlation": _correlation(rewards, flattery),
            "judge_flattery_correlation": _correlation(truths, flattery),
            "reward_judge_correlation": _correlation(rewards, truths)}


KNOWLEDGE, CLOSE_CALL, CLEAR = "needs knowledge", "close call", "clear"


def pair_kind(prompt: str, chosen: str, rejected: str, probability: float) -> str:
    """What it takes to label a pair the way the labeller would:

    KNOWLEDGE   one answer states the right number or fact, the other a wrong one: the labeller
                never hesitates, but a model must know the sum or the capital to agree with it;
    CLOSE_CALL  the labeller's own P(chosen) is within 0.2-0.8: even the best model is near a coin flip;
    CLEAR       everything else: a refusal against harmful help, a kind answer against a rude one, ...
    """
    verdicts = {frozenset(judge(prompt, answer).flags & {"correct", "incorrect"}) for answer in (chosen, rejected)}
    if verdicts == {frozenset({"correct"}), frozenset({"incorrect"})}:
        return KNOWLEDGE
    if abs(probability - 0.5) < 0.3:
        return CLOSE_CALL
    return CLEAR


def gap_by_kind(pairs: list[dict], predicted: Tensor, probabilities: list[float]) -> pd.DataFrame:
    """Accuracy and noise ceiling for each kind of pair, and how many points of the whole gap
    (ceiling - accuracy, in percentage points) each kind accounts for; the points add up to it.

    predicted: the reward model's P(chosen preferred) per pair; probabilities: the labeller's.
    """
    labeller_p = torch.tensor(probabilities, dtype=torch.float64)
    frame = pd.DataFrame({
        "kind": [pair_kind(p["prompt"], p["chosen"], p["rejected"], q) for p, q in zip(pairs, probabilities)],
        "right": (predicted > 0.5).double().numpy(),
        "best_possible": torch.maximum(labeller_p, 1 - labeller_p).numpy(),  # E[max(p, 1 - p)] pair by pair
    })
    table = frame.groupby("kind").agg(pairs=("right", "size"), accuracy=("right", "mean"),
                                      noise_ceiling=("best_possible", "mean"))
    table["points_of_gap"] = 100 * table["pairs"] * (table["noise_ceiling"] - table["accuracy"]) / len(pairs)
    return table


def reward_report(reward_model: RewardModel, tokenizer, heldout_pairs: list[dict]) -> dict:
    """Held-out accuracy (overall and per family), calibration error and the bias probe."""
    predicted = predicted_preferences(reward_model, tokenizer, heldout_pairs)
    correct = (predicted > 0.5).float()
    families = [(parse_prompt(p["prompt"]) or Prompt("unknown", "", "")).family for p in heldout_pairs]
    per_family = {family: float(correct[[i for i, f in enumerate(families) if f == family]].mean())
                  for family in sorted(set(families))}
    calibration = calibration_table(predicted)
    miscalibration = (calibration["predicted"] - calibration["observed"]).abs()
    expected_calibration_error = float((calibration["pairs"] * miscalibration).sum() / calibration["pairs"].sum())
    answers = list(dict.fromkeys((p["prompt"], a) for p in heldout_pairs for a in (p["chosen"], p["rejected"])))
    return {"heldout_accuracy": float(correct.mean()), "accuracy_by_family": per_family,
            "calibration_error": expected_calibration_error,
            **bias_probe(reward_model, tokenizer, [p for p, _ in answers], [a for _, a in answers])}
