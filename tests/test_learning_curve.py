"""A small reward model, a linear Bradley-Terry head on frozen features, and its learning curve
(lesson 04: how many comparisons does a reward model need?)."""

import pytest
import torch
import torch.nn.functional as F

from rlhf_lab import reward_analysis
from rlhf_lab.reward import RewardModel, encode_answers


def synthetic_pairs(n_pairs: int, true_w: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature pairs labelled by Bradley-Terry on the reward true_w · h: the first of each pair is the chosen one."""
    generator = torch.Generator().manual_seed(seed)
    first, second = torch.randn(2, n_pairs, len(true_w), generator=generator)
    first_wins = torch.rand(n_pairs, generator=generator) < torch.sigmoid((first - second) @ true_w)
    chosen = torch.where(first_wins[:, None], first, second)
    rejected = torch.where(first_wins[:, None], second, first)
    return chosen, rejected


TRUE_W = torch.tensor([2.0, -1.0, 0.5, 0.0])


def test_the_head_recovers_the_reward_that_made_the_labels():
    chosen, rejected = synthetic_pairs(4000, TRUE_W, seed=0)
    w = reward_analysis.fit_linear_head(chosen, rejected, l2=0.0, steps=300)
    # The maximum-likelihood w has a standard error of about 1/sqrt(4000 · 0.3) ≈ 0.03 per coordinate
    # (0.3: the Fisher information of one pair); 0.15 is five of those.
    assert torch.allclose(w, TRUE_W, atol=0.15), w
    heldout = synthetic_pairs(4000, TRUE_W, seed=1)
    # On fresh pairs the fitted head is as accurate as the true reward, up to sampling noise (std ≈ 0.008).
    assert reward_analysis.head_accuracy(w, *heldout) == pytest.approx(
        reward_analysis.head_accuracy(TRUE_W, *heldout), abs=0.02)


def test_weights_and_the_learners_loss_are_used():
    chosen, rejected = synthetic_pairs(500, TRUE_W, seed=2)
    # The same pairs twice, the second copy reversed (contradicting) with weight 0: it must not count.
    both_chosen, both_rejected = torch.cat([chosen, rejected]), torch.cat([rejected, chosen])
    weights = torch.cat([torch.ones(500), torch.zeros(500)])
    weighted = reward_analysis.fit_linear_head(both_chosen, both_rejected, weights)
    alone = reward_analysis.fit_linear_head(chosen, rejected)
    assert torch.allclose(weighted, alone, atol=1e-4)

    calls = []

    def learners_loss(chosen_rewards, rejected_rewards, weights=None):
        calls.append(weights)
        return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()

    assert torch.allclose(reward_analysis.fit_linear_head(chosen, rejected, loss=learners_loss), alone, atol=1e-4)
    assert len(calls) == 200 and calls[0] is None


def test_a_zero_head_is_a_coin_flip_and_bad_input_is_named():
    chosen, rejected = synthetic_pairs(10, TRUE_W, seed=3)
    assert reward_analysis.head_accuracy(torch.zeros(4), chosen, rejected) == 0.5
    with pytest.raises(ValueError, match="fit_linear_head: no pairs"):
        reward_analysis.fit_linear_head(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="fit_linear_head"):
        reward_analysis.fit_linear_head(chosen, rejected[:5])


def grouped_pairs(n_items: int, pairs_per_item: int) -> list[dict]:
    return [{"prompt": f"prompt {item}", "chosen": "a", "rejected": "b", "group": item}
            for item in range(n_items) for _ in range(pairs_per_item)]


def test_item_subset_takes_whole_items_in_a_random_order():
    pairs = grouped_pairs(20, 3)
    chosen = reward_analysis.item_subset(pairs, 10, torch.Generator().manual_seed(0))
    assert len(chosen) == 10 == len(set(chosen))
    groups = [pairs[index]["group"] for index in chosen]
    assert all(groups.count(group) == 3 for group in groups[:9]), "three whole items, then one pair of a fourth"
    assert groups != sorted(groups) or groups[0] != 0, "items in a random order"


def test_the_learning_curve_rises_with_the_number_of_comparisons():
    chosen, rejected = synthetic_pairs(3000, TRUE_W, seed=4)
    pairs = grouped_pairs(1000, 3)
    heldout = synthetic_pairs(2000, TRUE_W, seed=5)
    curve = reward_analysis.learning_curve(pairs, (chosen, rejected), heldout, [6, 60, 3000], repeats=4)
    assert list(curve["comparisons"]) == [6] * 4 + [60] * 4 + [3000], "every size drawn `repeats` times, all once"
    mean = curve.groupby("comparisons")["accuracy"].mean()
    assert mean[6] < mean[60] < mean[3000]
    with pytest.raises(ValueError, match="size 4000 is not between 1 and the 3000"):
        reward_analysis.learning_curve(pairs, (chosen, rejected), heldout, [4000])


def test_answer_features_are_what_the_reward_head_reads(sft):
    policy, tokenizer = sft
    torch.manual_seed(0)
    reward_model = RewardModel.from_policy(policy).eval()
    prompts = ["what is 7 plus 5?", "am i a failure?", "hi!"]
    answers = ["7 plus 5 is 12.", "no, you are not a failure. everyone has hard times.", "hello!"]
    features = reward_analysis.answer_features(policy.transformer, tokenizer, prompts, answers, batch_size=2)
    assert features.shape == (3, policy.config.n_embd)
    with torch.no_grad():
        expected = reward_model(*encode_answers(tokenizer, prompts, answers, "cpu"))
        from_features = reward_model.head(features).squeeze(-1)
    assert torch.allclose(from_features, expected, atol=1e-5)
    chosen, rejected = reward_analysis.pair_features(policy.transformer, tokenizer, [
        {"prompt": prompts[0], "chosen": answers[0], "rejected": "7 plus 5 is 13."}])
    assert torch.allclose(chosen, features[:1], atol=1e-5) and rejected.shape == (1, policy.config.n_embd)
    assert reward_analysis.answer_features(policy.transformer, tokenizer, [], []).shape == (0, policy.config.n_embd)
