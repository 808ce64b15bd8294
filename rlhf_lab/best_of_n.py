"""Best-of-n sampling: draw n answers, keep the one the reward model likes best.

No training at all, yet it moves the answer distribution away from the base policy. How far, in
KL, depends only on n.
"""

import math
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from rlhf_lab.config import SAMPLING_TEMPERATURE, for_scale
from rlhf_lab.evaluate import judge_answers
from rlhf_lab.policy import generate


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ base) = log n - (n - 1) / n   nats.

    Exact when the reward has a continuous distribution (no ties); for a discrete one it is an
    upper bound, tight when every single answer is unlikely (Beirami et al., 2024).
    """
    if n < 1:
        raise ValueError(f"best_of_n_kl: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_select(scores: Tensor) -> Tensor:
    """Index of the best-scoring of n candidates, per prompt: scores (B, n) -> index (B,).

    Ties go to the first candidate.
    """
    if scores.dim() != 2:
        raise ValueError(f"best_of_n_select: `scores` must have shape (B, n), got {tuple(scores.shape)}")
    return torch.argmax(scores, dim=1)


# =====================================================================================
# Sampling: n answers per prompt, scored by the reward model, the best one kept.
# =====================================================================================


@dataclass
class BestOfNConfig:
    n: int = 8  # candidates per prompt (the command's default; lesson 07 tries several)
    temperature: float = SAMPLING_TEMPERATURE  # as PPO samples: the same base distribution
    max_new_tokens: int = 64
    missing_end_penalty: float = -1.0  # as in PPO: an answer cut off at the length limit scores lower
    seed: int = 1234


BEST_OF_N_PRESETS = {"ci": dict(n=4), "laptop": dict(), "gpu": dict(n=16)}


def best_of_n_config(scale: str | None = None, **overrides) -> BestOfNConfig:
    return for_scale(BestOfNConfig, BEST_OF_N_PRESETS, scale, **overrides)


@torch.no_grad()
def best_of_n_sample(policy, reward_model, tokenizer, questions: list[str], n: int,
                     temperature: float = SAMPLING_TEMPERATURE,
                     max_new_tokens: int = 64, generator: torch.Generator | None = None,
                     missing_end_penalty: float = -1.0, progress: bool = True) -> pd.DataFrame:
    """Answer each question with the best of n sampled answers, by the reward model.

    All n x B answers are sampled in one batch (each question repeated n times), scored by the
    reward model at their last real token, penalised if they never ended (like PPO's rollouts),
    and `best_of_n_select` keeps the argmax per question.

    Returns one row per question: `prompt`, `answer` (the chosen one), `finished`, `reward` (its
    reward-model score, before any missing-end penalty, as PPO logs it), `choice` (its index among
    the candidates), and the lists `candidates`, `candidate_scores` (the penalised scores the
    choice was made on) and `candidate_finished` of all n. `progress`: a bar while sampling, if slow.
    """
    if n < 1:
        raise ValueError(f"best_of_n_sample: n must be >= 1, got {n}")
    device = next(policy.parameters()).device
    repeated = [q for q in questions for _ in range(n)]  # candidate j of question i sits at row i * n + j
    rollout = generate(policy, tokenizer, repeated, max_new_tokens, temperature, generator, progress=progress)
    input_ids, attention_mask = rollout.input_ids.to(device), rollout.attention_mask.to(device)
    raw_scores = reward_model(input_ids, attention_mask).float().cpu()
    finished = rollout.finished.cpu()
    scores = torch.where(finished, raw_scores, raw_scores + missing_end_penalty).view(len(questions), n)
    choice = best_of_n_select(scores)
    rows = []
    for i, question in enumerate(questions):
        candidates = rollout.texts[i * n:(i + 1) * n]
        done = finished[i * n:(i + 1) * n].tolist()
        best = int(choice[i])
        rows.append({"prompt": question, "answer": candidates[best], "finished": done[best],
                     "reward": float(raw_scores[i * n + best]), "choice": best, "candidates": candidates,
                     "candidate_scores": scores[i].tolist(), "candidate_finished": done})
    return pd.DataFrame(rows)


def best_of_n_ladder(candidates: pd.DataFrame, ns: list[int],
                     families: list[str] | None = None) -> dict[int, pd.DataFrame]:
    """Best-of-n' answers for every n' in `ns` from one `best_of_n_sample` frame of n >= max(ns) candidates.

    The first n' of n independent candidates are themselves n' independent candidates, so one
    sampling pass gives the whole ladder. Returns a judged frame for each n': `evaluate.judge_answers`
    columns plus `reward` (the penalised score the choice was made on) and `kl`, the analytic
    bound log n' - (n' - 1)/n' (best-of-n has no per-answer KL estimate).
    """
    available = len(candidates["candidates"].iloc[0])
    if max(ns) > available:
        raise ValueError(f"best_of_n_ladder: n = {max(ns)} needs that many candidates, the frame has {available}")
    judged = {}
    for n in ns:
        scores = torch.tensor([row[:n] for row in candidates["candidate_scores"]])
        choice = best_of_n_select(scores).tolist()
        answers = [row[c] for row, c in zip(candidates["candidates"], choice)]
        finished = [row[c] for row, c in zip(candidates["candidate_finished"], choice)]
        frame = judge_answers(list(candidates["prompt"]), answers, finished, families)
        frame["reward"] = [row[c] for row, c in zip(candidates["candidate_scores"], choice)]
        frame["kl"] = best_of_n_kl(n)
        judged[n] = frame
    return judged
