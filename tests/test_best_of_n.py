"""Best-of-n: the analytic KL and the selection helper."""

import math

import pytest
import torch

from rlhf_lab.best_of_n import best_of_n_kl, best_of_n_select


def best_of_n_distribution(base_probs: torch.Tensor, n: int) -> torch.Tensor:
    """Exact best-of-n distribution over outcomes listed in increasing reward.

    The best of n draws is at most outcome i with probability F(i)^n, with F the base CDF, so
    P(best = i) = F(i)^n - F(i-1)^n.
    """
    cdf = base_probs.cumsum(0)
    return cdf**n - (cdf - base_probs) ** n


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return (p * (p / q).log()).sum().item()


def test_kl_is_zero_for_n_one_and_matches_the_formula():
    assert best_of_n_kl(1) == 0.0
    for n in (2, 4, 16, 100):
        assert best_of_n_kl(n) == pytest.approx(math.log(n) - (n - 1) / n)
    assert best_of_n_kl(2) == pytest.approx(0.1931471805599453)


def test_kl_grows_with_n():
    values = [best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 64)]
    assert values == sorted(values) and len(set(values)) == len(values)


@pytest.mark.parametrize("n", [2, 4, 16])
def test_formula_matches_exact_kl_on_a_fine_discrete_distribution(n):
    # 2000 outcomes with distinct rewards (their order) and uneven probabilities: close to the
    # continuous case the formula describes.
    base_probs = torch.rand(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    base_probs /= base_probs.sum()
    exact = kl(best_of_n_distribution(base_probs, n), base_probs)
    assert exact == pytest.approx(best_of_n_kl(n), rel=1e-3)


def test_formula_is_an_upper_bound_on_a_coarse_discrete_distribution():
    base_probs = torch.tensor([0.3, 0.1, 0.25, 0.2, 0.15], dtype=torch.float64)
    for n in (2, 4, 16):
        assert kl(best_of_n_distribution(base_probs, n), base_probs) < best_of_n_kl(n)


def test_sampling_best_of_n_with_the_selector_matches_the_exact_distribution():
    generator = torch.Generator().manual_seed(0)
    base_probs = torch.tensor([0.3, 0.1, 0.25, 0.2, 0.15], dtype=torch.float64)
    rewards = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0])  # distinct, not in index order
    n, prompts = 4, 40_000
    candidates = torch.multinomial(base_probs, prompts * n, replacement=True, generator=generator).view(prompts, n)
    best = best_of_n_select(rewards[candidates])
    chosen = candidates[torch.arange(prompts), best]
    frequencies = torch.bincount(chosen, minlength=5).double() / prompts
    order = rewards.argsort()
    exact = torch.zeros(5, dtype=torch.float64)
    exact[order] = best_of_n_distribution(base_probs[order], n)
    assert (frequencies - exact).abs().max() < 0.01
    assert kl(frequencies, base_probs) == pytest.approx(kl(exact, base_probs), abs=0.02)


def test_select_picks_the_argmax_per_row_first_on_ties():
    scores = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 2.0], [-5.0, -4.0, -6.0]])
    assert torch.equal(best_of_n_select(scores), torch.tensor([1, 0, 1]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n_kl(0)
    with pytest.raises(ValueError, match=r"\(B, n\)"):
        best_of_n_select(torch.zeros(4))
