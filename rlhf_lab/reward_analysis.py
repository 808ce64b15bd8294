"""What a trained reward model has learnt: accuracy, calibration, biases, and where it fails.

Lesson 04 measures its reward model against the simulated labeller, who is known exactly:

    predicted_preferences  the model's P(chosen preferred) = σ(r_chosen - r_rejected) per pair
    calibration_table      predicted against observed preference frequency, bin by bin
    bias_probe             does the model like length and flattery more than the judge does?
    gap_by_kind            which kinds of pairs (need knowledge, close calls, clear) cost accuracy
    reward_report          all of it for a set of held-out pairs (what the reward stage saves)

and how many labels a reward model needs, with a small reward model that trains in milliseconds
(a linear Bradley-Terry head on the frozen SFT transformer's features):

    answer_features, pair_features   what a reward head reads: the hidden state at the last real token
    fit_linear_head, head_accuracy   fit r = w · h to pairs with a Bradley-Terry loss; its accuracy
    learning_curve                   held-out accuracy against the number of comparisons
"""

from collections.abc import Callable

import pandas as pd
import torch
from torch import Tensor

from rlhf_lab.judge import judge
from rlhf_lab.masked import check_same_shape
from rlhf_lab.policy import position_ids_from_mask
from rlhf_lab.reward import (
    RewardModel,
    bradley_terry_loss,
    bradley_terry_probability,
    encode_answers,
    last_real_index,
    pair_rewards,
    score_answers,
)
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


# =====================================================================================
# How many labels does a reward model need? A Bradley-Terry head on frozen features.
# =====================================================================================


@torch.no_grad()
def answer_features(backbone, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 256) -> Tensor:
    """h(x, y): the backbone's hidden state at each answer's last real token, `(N, d)` on the CPU.

    It is what a reward head reads (`RewardModel.forward`). With the backbone frozen (the SFT
    policy's transformer), a linear head on h is a small reward model that trains in milliseconds.
    """
    device = next(backbone.parameters()).device
    features = []
    for i in range(0, len(prompts), batch_size):
        input_ids, attention_mask = encode_answers(tokenizer, prompts[i:i + batch_size], answers[i:i + batch_size],
                                                   device)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        features.append(hidden[torch.arange(len(input_ids), device=device), last_real_index(attention_mask)].cpu())
    return torch.cat(features) if features else torch.zeros(0, backbone.config.n_embd)


def pair_features(backbone, tokenizer, pairs: list[dict]) -> tuple[Tensor, Tensor]:
    """`answer_features` of every pair's chosen and rejected answer: two `(N, d)` tensors."""
    prompts = [pair["prompt"] for pair in pairs]
    return (answer_features(backbone, tokenizer, prompts, [pair["chosen"] for pair in pairs]),
            answer_features(backbone, tokenizer, prompts, [pair["rejected"] for pair in pairs]))


def fit_linear_head(chosen_features: Tensor, rejected_features: Tensor, weights: Tensor | None = None,
                    loss: Callable = bradley_terry_loss, l2: float = 1e-3, steps: int = 200,
                    lr: float = 0.05) -> Tensor:
    """A reward linear in frozen features, r(x, y) = w · h(x, y), fitted by full-batch Adam on

        loss(H_chosen w, H_rejected w, weights) + l2 ||w||^2

    `loss` is a Bradley-Terry loss, `(chosen_rewards, rejected_rewards, weights)` -> scalar. There
    is no bias term: Bradley-Terry sees only differences of rewards, where a bias cancels. The
    small L2 penalty keeps w finite when a handful of pairs can all be explained perfectly.
    """
    check_same_shape("fit_linear_head", chosen_features=chosen_features, rejected_features=rejected_features)
    if len(chosen_features) == 0:
        raise ValueError("fit_linear_head: no pairs to fit")
    chosen_features, rejected_features = chosen_features.float(), rejected_features.float()
    w = torch.zeros(chosen_features.shape[1], requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        objective = loss(chosen_features @ w, rejected_features @ w, weights) + l2 * (w * w).sum()
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
    return w.detach()


def head_accuracy(w: Tensor, chosen_features: Tensor, rejected_features: Tensor) -> float:
    """Share of pairs whose chosen answer the linear reward w · h scores higher (an exact tie counts half)."""
    margins = (chosen_features.float() - rejected_features.float()) @ w
    return ((margins > 0).double() + 0.5 * (margins == 0).double()).mean().item()


def item_subset(pairs: list[dict], n_pairs: int, generator: torch.Generator) -> list[int]:
    """Indices of the first `n_pairs` pairs of randomly ordered labelling items (a prompt's pairs stay together),
    the way a labeller would give them: whole items, one after another."""
    by_item: dict[object, list[int]] = {}
    for index, pair in enumerate(pairs):
        by_item.setdefault(pair.get("group", pair["prompt"]), []).append(index)
    items = list(by_item.values())
    order = torch.randperm(len(items), generator=generator).tolist()
    return [index for item in order for index in items[item]][:n_pairs]


def learning_curve(pairs: list[dict], features: tuple[Tensor, Tensor], heldout_features: tuple[Tensor, Tensor],
                   sizes: list[int], repeats: int = 5, seed: int = 0, loss: Callable = bradley_terry_loss,
                   l2: float = 1e-3) -> pd.DataFrame:
    """Held-out accuracy of `fit_linear_head` trained on n comparisons, for each n in `sizes`.

    pairs, features: the training pairs and their (chosen, rejected) features; each of `repeats`
    draws takes the pairs of random labelling items until it has n. One row per (n, draw):
    `comparisons`, `draw`, `accuracy`. A size of all the pairs is drawn once (every draw is the same).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for size in sizes:
        if not 0 < size <= len(pairs):
            raise ValueError(f"learning_curve: size {size} is not between 1 and the {len(pairs)} training pairs")
        for draw in range(1 if size == len(pairs) else repeats):
            chosen = item_subset(pairs, size, generator)
            w = fit_linear_head(features[0][chosen], features[1][chosen], loss=loss, l2=l2)
            rows.append({"comparisons": size, "draw": draw, "accuracy": head_accuracy(w, *heldout_features)})
    return pd.DataFrame(rows)
