"""Collecting preference labels: on-policy candidates, and the simulated human at scale.

InstructGPT showed its labellers K answers of the current model to one prompt and had them rank
all K; a ranking gives C(K, 2) comparisons for the effort of one. We do the same: sample K
answers per prompt from the SFT policy (on-policy: the reward model must judge the kind of text
PPO will produce), then label every pair -- by the learner in the widgets (`labelling_widgets`),
or by the simulated labeller (`judge.SimulatedLabeller`: Bradley-Terry on the simulated human's
score, with noise and the length/flattery bias).
"""

from __future__ import annotations

import random
from itertools import combinations

import torch
from tqdm.auto import tqdm

from rlhf_lab.config import PROGRESS_DELAY
from rlhf_lab.judge import DEFAULT_LABELLER, SimulatedLabeller
from rlhf_lab.policy import generate
from rlhf_lab.preferences import PreferenceRecord

SIMULATED_ANNOTATOR = "simulated-human"  # the `annotator` name in the records it labels
# Candidates are sampled at temperature 1: more varied answers make more informative comparisons
# (at 0.7 many of the K answers are near-copies and the labels are mostly coin flips).
CANDIDATE_TEMPERATURE = 1.0


def sample_candidates(model, tokenizer, prompts: list[str], k: int = 4, temperature: float = CANDIDATE_TEMPERATURE,
                      max_new_tokens: int = 48, seed: int = 0, progress: bool = True) -> list[tuple[str, list[str]]]:
    """K sampled answers per prompt: `[(prompt, [answer_1, ..., answer_K]), ...]`.

    Answers that did not finish (no end token) get " ..." appended so a labeller sees they were cut off.
    `progress`: a bar while sampling, if it takes more than a couple of seconds.
    """
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    repeated = [p for p in prompts for _ in range(k)]
    rollout = generate(model, tokenizer, repeated, max_new_tokens=max_new_tokens, temperature=temperature,
                       generator=generator, progress=progress)
    texts = [t if done else t + " ..." for t, done in zip(rollout.texts, rollout.finished.tolist())]
    return [(prompt, texts[i * k:(i + 1) * k]) for i, prompt in enumerate(prompts)]


def distinct_pairs(answers: list[str]) -> list[tuple[str, str]]:
    """All C(K,2) pairs of different answers (identical twins carry no preference signal)."""
    unique = list(dict.fromkeys(answers))
    return list(combinations(unique, 2))


def simulate_labels(candidates: list[tuple[str, list[str]]], labeller: SimulatedLabeller = DEFAULT_LABELLER,
                    seed: int = 0, limit: int | None = None, progress: bool = True) -> list[PreferenceRecord]:
    """Label every distinct pair of each prompt's candidates with one noisy Bradley-Terry draw."""
    rng = random.Random(seed)
    records = []
    for prompt, answers in tqdm(candidates, desc="labelling", unit="prompt", disable=not progress,
                                delay=PROGRESS_DELAY, leave=False):
        for answer_a, answer_b in distinct_pairs(answers):
            a_wins = labeller.label(prompt, answer_a, answer_b, rng)
            chosen, rejected = (answer_a, answer_b) if a_wins else (answer_b, answer_a)
            records.append(PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected, source="simulated",
                                            annotator=SIMULATED_ANNOTATOR))
            if limit is not None and len(records) >= limit:
                return records
    return records


def label_probabilities(pairs: list[dict], labeller: SimulatedLabeller = DEFAULT_LABELLER) -> list[float]:
    """The labeller's exact P(chosen preferred) for each recorded pair (what the noise ceiling needs)."""
    return [labeller.probability(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
