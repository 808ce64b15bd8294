"""Best-of-n's measured KL: exact on known distributions, close on sampled ones, right log-probs from a policy."""

import math

import pytest
import torch
from world_questions import WORLD_QUESTIONS as QUESTIONS

from rlhf_lab import best_of_n
from rlhf_lab.best_of_n import best_of_n_kl, best_of_n_kl_estimate, best_of_n_kl_of_distribution
from rlhf_lab.dpo import sequence_logprob
from rlhf_lab.policy import generate, response_logprobs


def exact_discrete_kl(probs_in_reward_order: torch.Tensor, n: int) -> float:
    """KL(best-of-n ‖ base) over outcomes listed in increasing reward: P(best = i) = F(i)^n - F(i-1)^n."""
    cdf = probs_in_reward_order.double().cumsum(0)
    best = cdf**n - (cdf - probs_in_reward_order) ** n
    return (best * (best / probs_in_reward_order).log()).sum().item()


# Five answers, not listed in reward order, with uneven probabilities: heavy ties among n draws.
PROBS = torch.tensor([0.3, 0.1, 0.25, 0.2, 0.15], dtype=torch.float64)
SCORES = [0.5, -1.0, 2.0, 0.0, 1.0]


def test_one_diffuse_piece_is_the_analytic_formula():
    for n in (1, 2, 4, 16, 100):
        kl = best_of_n_kl_of_distribution(torch.tensor([1.0], dtype=torch.float64), torch.tensor([False]), n).item()
        assert kl == pytest.approx(best_of_n_kl(n), abs=1e-12)


def test_diffuse_pieces_add_up_like_one_piece():
    # A continuum cut into pieces is still a continuum: the integrals over the pieces add up.
    masses = torch.tensor([0.1, 0.35, 0.05, 0.5], dtype=torch.float64)
    kl = best_of_n_kl_of_distribution(masses, torch.zeros(4, dtype=torch.bool), 8).item()
    assert kl == pytest.approx(best_of_n_kl(8), abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_atoms_give_the_exact_discrete_kl_below_the_formula(n):
    order = torch.tensor(SCORES).argsort()
    kl = best_of_n_kl_of_distribution(PROBS[order], torch.ones(5, dtype=torch.bool), n).item()
    assert kl == pytest.approx(exact_discrete_kl(PROBS[order], n), abs=1e-12)
    if n > 1:
        assert kl < best_of_n_kl(n)  # ties: the formula is only an upper bound


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_estimate_without_ties_is_the_analytic_formula(n):
    # 16 different answers, each with probability 1e-12: a continuous reward, seen 16 times.
    scores = torch.rand(16, generator=torch.Generator().manual_seed(0)).tolist()
    estimate = best_of_n_kl_estimate(list(range(16)), scores, [math.log(1e-12)] * 16, n)
    # The drawn answers hold 16e-12 of the probability; that moves the KL by far less than 1e-8.
    assert estimate == pytest.approx(best_of_n_kl(n), abs=1e-8)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_estimate_with_ties_is_exact_once_every_answer_was_drawn(n):
    draws = torch.multinomial(PROBS, 60, replacement=True, generator=torch.Generator().manual_seed(1)).tolist()
    assert set(draws) == set(range(5)), "the test needs every answer drawn at least once"
    estimate = best_of_n_kl_estimate([f"answer {i}" for i in draws], [SCORES[i] for i in draws],
                                     [PROBS[i].log().item() for i in draws], n)
    order = torch.tensor(SCORES).argsort()
    assert estimate == pytest.approx(exact_discrete_kl(PROBS[order], n), abs=1e-9)


def test_answers_with_equal_scores_form_one_atom():
    # Two different answers with the same score tie: best-of-n picks "the first of them", so they
    # act as one answer of their summed probability.
    split = best_of_n_kl_estimate(["a", "b", "c"], [1.0, 1.0, 0.0], [math.log(0.3), math.log(0.2), math.log(0.5)], 4)
    merged = best_of_n_kl_estimate(["ab", "c"], [1.0, 0.0], [math.log(0.5), math.log(0.5)], 4)
    assert split == pytest.approx(merged, abs=1e-12)


def mixture_draws(count: int, generator: torch.Generator) -> tuple[list, list, list]:
    """Draws from a policy with three frequent answers (probabilities 0.2, 0.1, 0.4 at scores 0, 0.5,
    1.5) and a continuum of rare ones (probability 0.3, scores uniform on [-1, 2])."""
    atoms = [(0.0, 0.2), (0.5, 0.1), (1.5, 0.4)]
    answers, scores, logprobs = [], [], []
    for u, x in zip(torch.rand(count, generator=generator).tolist(), torch.rand(count, generator=generator).tolist()):
        below = 0.0
        for score, prob in atoms:
            below += prob
            if u < below:
                answers.append(score), scores.append(score), logprobs.append(math.log(prob))
                break
        else:
            answers.append(("rare", x)), scores.append(3 * x - 1), logprobs.append(math.log(1e-12))
    return answers, scores, logprobs


def mixture_kl(n: int) -> float:
    """The mixture's exact KL: the continuum's pieces between the frequent answers, in score order."""
    masses = [0.3 / 3 * 1.0, 0.2, 0.3 / 3 * 0.5, 0.1, 0.3 / 3 * 1.0, 0.4, 0.3 / 3 * 0.5]
    atoms = [False, True, False, True, False, True, False]
    return best_of_n_kl_of_distribution(torch.tensor(masses, dtype=torch.float64), torch.tensor(atoms), n).item()


@pytest.mark.parametrize("n", [2, 4, 8])
def test_estimate_on_a_mixture_of_ties_and_rare_answers(n):
    generator = torch.Generator().manual_seed(2)
    truth = mixture_kl(n)
    # With 4000 draws 1200 rare answers place the unseen mass: by the DKW inequality their empirical
    # CDF is within 0.05 of the truth (probability > 0.99), which moves at most 0.3 * 0.05 = 0.015 of
    # probability; best-of-8's density ratio is below 8, so the KL moves by less than ~0.015 * (8 + log 8).
    many = best_of_n_kl_estimate(*mixture_draws(4000, generator), n)
    assert many == pytest.approx(truth, abs=0.15)
    # With 16 draws per prompt (the lesson's setting), averaged over 200 prompts: the estimate is
    # far closer to the truth than the formula, which ignores the ties.
    small = torch.tensor([best_of_n_kl_estimate(*mixture_draws(16, generator), n) for _ in range(200)])
    assert abs(small.mean().item() - truth) < (best_of_n_kl(n) - truth) / 3


def test_where_the_unseen_mass_goes():
    # Two answers drawn with probabilities 0.3 and 0.2: half the mass was never drawn.
    args = (["low", "high"], [0.0, 1.0], [math.log(0.3), math.log(0.2)], 4)
    lowest = best_of_n_kl_estimate(*args, unseen="lowest")
    highest = best_of_n_kl_estimate(*args, unseen="highest")
    # Below both: pieces (0.5 diffuse, 0.3, 0.2); above both: (0.3, 0.2, 0.5 diffuse).
    assert lowest == pytest.approx(best_of_n_kl_of_distribution(
        torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([False, True, True]), 4).item(), abs=1e-12)
    assert highest == pytest.approx(best_of_n_kl_of_distribution(
        torch.tensor([0.3, 0.2, 0.5], dtype=torch.float64), torch.tensor([True, True, False]), 4).item(), abs=1e-12)
    # "rarest": each answer was drawn once, so each carries half of it, straddling its score.
    rarest = best_of_n_kl_estimate(*args)
    assert rarest == pytest.approx(best_of_n_kl_of_distribution(
        torch.tensor([0.125, 0.3, 0.125, 0.125, 0.2, 0.125], dtype=torch.float64),
        torch.tensor([False, True, False, False, True, False]), 4).item(), abs=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same non-zero length"):
        best_of_n_kl_estimate(["a"], [1.0, 2.0], [0.0], 2)
    with pytest.raises(ValueError, match="sum to"):
        best_of_n_kl_estimate(["a", "b"], [1.0, 2.0], [math.log(0.8), math.log(0.7)], 2)
    with pytest.raises(ValueError, match="unseen must be"):
        best_of_n_kl_estimate(["a"], [1.0], [0.0], 2, unseen="middle")
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n_kl_of_distribution(torch.tensor([1.0]), torch.tensor([True]), 0)


@pytest.mark.slow
def test_candidate_logprobs_are_the_sampling_log_probs(sft, reward_model):
    policy, tokenizer = sft
    n, max_new_tokens, temperature = 4, 10, 0.7  # a short limit: some candidates never end
    candidates = best_of_n.best_of_n_sample(policy, reward_model, tokenizer, QUESTIONS, n, temperature,
                                            max_new_tokens, torch.Generator().manual_seed(0))
    logprobs = best_of_n.candidate_logprobs(policy, tokenizer, candidates, temperature)
    # The same random numbers give the same rollout; its own log-probs are what the candidates' must be.
    rollout = generate(policy, tokenizer, [q for q in QUESTIONS for _ in range(n)], max_new_tokens, temperature,
                       torch.Generator().manual_seed(0))
    assert rollout.texts == [answer for row in candidates["candidates"] for answer in row]
    assert not rollout.finished.all(), "the test needs unfinished candidates"
    direct = sequence_logprob(response_logprobs(policy, rollout.input_ids, rollout.attention_mask,
                                                rollout.context_length, temperature), rollout.response_mask)
    # float32 log-probs summed over at most 11 tokens of size < 30: rounding stays far below 1e-3.
    assert torch.allclose(torch.tensor(logprobs, dtype=torch.float64).flatten(), direct.double(), atol=1e-3)
    kls = best_of_n.best_of_n_measured_kl(candidates, logprobs, n)
    assert len(kls) == len(QUESTIONS) and ((kls >= 0) & (kls <= best_of_n_kl(n) + 1e-9)).all()
