"""Lesson 03 (preferences): model solutions to the exercises.

Each function can be pasted into the exercise's stub cell as it is.
"""


def my_pairs_from_ranking(ranking: list[str]) -> list[tuple[str, str]]:
    """Every (better, worse) pair of a ranking of K answers, best first: K(K-1)/2 pairs, in any order.

        [a, b, c]  ->  (a, b), (a, c), (b, c)

    A ranking of a single answer gives no pair.
    """
    pairs = []
    for better_rank, better in enumerate(ranking):
        for worse in ranking[better_rank + 1:]:  # everything ranked below `better`
            pairs.append((better, worse))
    return pairs


def my_noise_ceiling(probabilities: list[float]) -> float:
    """The best accuracy any model can reach on noisy labels: the mean over pairs of max(p, 1 - p).

        ceiling = (1/N) sum_i max(p_i, 1 - p_i)

    p_i is the probability that the annotator picks the first answer of pair i. A perfect model
    predicts the likelier label, and is still wrong whenever the annotator's coin lands the other way.
    """
    return sum(max(p, 1 - p) for p in probabilities) / len(probabilities)
