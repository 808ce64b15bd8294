"""Best-of-n sampling: draw n answers, keep the one the reward model likes best.

No training at all, yet it moves the answer distribution away from the base policy. How far, in
KL: at most log n - (n - 1)/n nats (`best_of_n_kl`), exactly that when no two answers tie; less
when the policy often writes the very same answer, as ours does. `best_of_n_measured_kl`
measures it from the sampled candidates and their exact log-probs.
"""

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from rlhf_lab.config import SAMPLING_TEMPERATURE, for_scale
from rlhf_lab.dpo import encode_responses, sequence_logprob
from rlhf_lab.evaluate import judge_answers
from rlhf_lab.policy import generate, response_logprobs


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
    bound log n' - (n' - 1)/n' (the measured KL, per prompt: `best_of_n_measured_kl`).
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


# =====================================================================================
# The measured KL: how far best-of-n really moves a policy that often repeats itself.
# =====================================================================================


def best_of_n_kl_of_distribution(masses: Tensor, atoms: Tensor, n: int) -> Tensor:
    """KL(best-of-n ‖ π) in nats for a reward distribution given piece by piece, in increasing reward.

    The best of n draws scores at most r with probability F(r)^n, F being the reward's CDF under
    π. Piece k spans F from a = (mass of the pieces below it) to b = a + masses[k]:

      an atom (one answer, or several with the same score) has probability q = b - a under π and
      p = b^n - a^n under best-of-n (ties go to the first draw, so the split among the atom's
      answers is π's), and contributes  p log(p / q);
      a diffuse stretch (many rare answers, no two alike) has best-of-n density n F^(n-1) relative
      to π, and contributes  ∫_a^b n t^(n-1) log(n t^(n-1)) dt
                           = (b^n - a^n) log n + (n - 1) [b^n log b - a^n log a - (b^n - a^n) / n].

    One diffuse piece of mass 1 gives log n - (n - 1)/n (`best_of_n_kl`); atoms give less.
    masses: (K,) summing to 1; atoms: (K,) bool. Returns a 0-dim float64 tensor.
    """
    if n < 1:
        raise ValueError(f"best_of_n_kl_of_distribution: n must be >= 1, got {n}")
    masses = masses.double()
    upper = masses.cumsum(0).clamp(max=1.0)
    lower = (upper - masses).clamp(min=0.0)
    chosen = upper**n - lower**n  # best-of-n's probability of each piece
    atom_terms = torch.where(masses > 0, torch.xlogy(chosen, chosen / masses.clamp(min=1e-300)), 0.0)
    # x^n log x as xlogy(x^n, x): 0 at x = 0, where log x is -inf.
    diffuse_terms = chosen * math.log(n) + (n - 1) * (torch.xlogy(upper**n, upper) - torch.xlogy(lower**n, lower)
                                                      - chosen / n)
    return torch.where(atoms, atom_terms, diffuse_terms).sum().clamp(min=0.0)  # a KL; rounding can dip below 0


def best_of_n_kl_estimate(answers: Sequence[Hashable], scores: Sequence[float], logprobs: Sequence[float],
                          n: int, unseen: str = "rarest") -> float:
    """The KL of best-of-n to the policy π for one prompt, from N answers sampled from π.

    With ties, best-of-n draws answer y with probability

        P_n(y) = (F(r_y)^n - F(r_y⁻)^n) · π(y) / P(R = r_y)

    (F: the CDF of the score R under π; F(r⁻) = P(R < r)), so KL(P_n ‖ π) depends only on the
    distribution of R, which we estimate from the N samples and their exact log-probs log π(y):

      * each distinct answer is an atom at its score with its exact probability π(y) (answers with
        equal scores make one atom): no counting error, however often it was drawn;
      * the mass no sample hit, U = 1 - Σ π(y), belongs to answers too rare to be drawn: a diffuse
        stretch. Where it lies is estimated as Good and Turing would: the answers drawn the fewest
        times (usually once) stand for the unseen ones, so U is split evenly among them, half just
        below and half just above each one's score.

    The KL of that distribution is then exact (`best_of_n_kl_of_distribution`). With no ties (every
    answer rare, U ≈ 1) it is log n - (n - 1)/n; once every answer with any real probability has
    been drawn (U ≈ 0) it is the exact KL. Its only guess is where U lies, and it guesses worst
    what lies above the best draw: keep n well below N. To see how much the guess matters, put U
    below every drawn answer (`unseen="lowest"`) or above them all (`unseen="highest"`).

    answers: N hashable keys, equal for identical answers (e.g. (text, finished));
    scores: the N scores the choice is made on; logprobs: the N log π(y) at the sampling temperature.
    """
    if unseen not in ("rarest", "lowest", "highest"):
        raise ValueError(f"best_of_n_kl_estimate: unseen must be 'rarest', 'lowest' or 'highest', got {unseen!r}")
    if not len(answers) == len(scores) == len(logprobs) > 0:
        raise ValueError(f"best_of_n_kl_estimate: answers, scores and logprobs need the same non-zero length, "
                         f"got {len(answers)}, {len(scores)} and {len(logprobs)}")
    drawn = Counter(answers)
    by_score: dict[float, list] = {}  # score -> [probability under π, times drawn]
    for answer, (score, logprob) in dict(zip(answers, zip(scores, logprobs))).items():  # each answer once
        atom = by_score.setdefault(score, [0.0, 0])
        atom[0] += math.exp(logprob)
        atom[1] += drawn[answer]
    seen = sum(mass for mass, _ in by_score.values())
    if seen > 1 + 1e-3:
        raise ValueError(f"best_of_n_kl_estimate: the distinct answers' probabilities sum to {seen:.4f} > 1: "
                         "give identical answers the same key, and log-probs at the sampling temperature")
    unseen_mass = max(0.0, 1.0 - seen)
    rarest = min(count for _, count in by_score.values())
    spread = unseen_mass / (2 * sum(count == rarest for _, count in by_score.values()))
    pieces = [(unseen_mass, False)] if unseen == "lowest" else []
    for score in sorted(by_score):
        mass, count = by_score[score]
        around = unseen == "rarest" and count == rarest
        pieces += [(spread, False), (mass, True), (spread, False)] if around else [(mass, True)]
    pieces += [(unseen_mass, False)] if unseen == "highest" else []
    masses, atoms = zip(*pieces)
    return best_of_n_kl_of_distribution(torch.tensor(masses, dtype=torch.float64), torch.tensor(atoms), n).item()


@torch.no_grad()
def candidate_logprobs(policy, tokenizer, candidates: pd.DataFrame, temperature: float = SAMPLING_TEMPERATURE,
                       batch_size: int = 256) -> list[list[float]]:
    """log π(y) of every candidate of a `best_of_n_sample` frame: one list per prompt.

    Summed over the answer's tokens (its end token included, when it ended), at the temperature the
    candidates were sampled at (rule 2): the probability with which π really drew the answer.
    Each distinct answer goes through the policy once.
    """
    keys = [(row["prompt"], answer, ended) for _, row in candidates.iterrows()
            for answer, ended in zip(row["candidates"], row["candidate_finished"])]
    distinct = list(dict.fromkeys(keys))
    device = next(policy.parameters()).device
    logprob_of = {}
    for start in range(0, len(distinct), batch_size):
        chunk = distinct[start:start + batch_size]
        input_ids, attention_mask, ctx, mask = encode_responses(
            tokenizer, [key[0] for key in chunk], [key[1] for key in chunk], device, [key[2] for key in chunk])
        token_logprobs = response_logprobs(policy, input_ids, attention_mask, ctx, temperature)
        logprob_of.update(zip(chunk, sequence_logprob(token_logprobs, mask).double().cpu().tolist()))
    return [[logprob_of[(row["prompt"], answer, ended)]
             for answer, ended in zip(row["candidates"], row["candidate_finished"])]
            for _, row in candidates.iterrows()]


def best_of_n_measured_kl(candidates: pd.DataFrame, logprobs: list[list[float]], n: int,
                          unseen: str = "rarest") -> pd.Series:
    """`best_of_n_kl_estimate` for every prompt of a `best_of_n_sample` frame (nats, one per prompt).

    `logprobs` from `candidate_logprobs`. All of a prompt's candidates estimate the distribution of
    its scores, so every n' of a ladder gets its estimate from the same candidates.
    """
    return pd.Series([best_of_n_kl_estimate(list(zip(row["candidates"], row["candidate_finished"])),
                                            row["candidate_scores"], row_logprobs, n, unseen)
                      for (_, row), row_logprobs in zip(candidates.iterrows(), logprobs)], name=f"kl_best_of_{n}")
