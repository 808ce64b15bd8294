"""Measuring a policy for the frontier (`evaluate.measure_policy`): KL, the judge and the reward model."""

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from world_questions import WORLD_QUESTIONS as QUESTIONS

from rlhf_lab.evaluate import EvalConfig, frontier_point, measure_policy
from rlhf_lab.judge import judge
from rlhf_lab.policy import generate
from rlhf_lab.reward import score_answers
from rlhf_lab.tokenizer import format_prompt

CFG = EvalConfig(max_new_tokens=64, seed=1234)


@pytest.fixture
def models(sft, reward_model):
    return (*sft, reward_model)


def perturbed(policy, seed: int = 0, size: float = 0.05):
    other = copy.deepcopy(policy)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(size * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(seed)))
    return other


def test_a_policy_measured_against_itself_has_zero_kl(models):
    policy, tokenizer, reward_model = models
    frame = measure_policy(policy, tokenizer, QUESTIONS, CFG, reference=copy.deepcopy(policy),
                           reward_model=reward_model)
    assert (frame["kl"] == 0).all() and (frame["kl_k3"] == 0).all()


def test_measured_kl_is_the_summed_log_ratio_at_the_sampling_temperature(models):
    policy, tokenizer, _ = models
    moved = perturbed(policy, size=0.02)
    temperature, seed = 0.7, 1234
    sampling = EvalConfig(temperature=temperature, max_new_tokens=40, seed=seed)
    frame = measure_policy(moved, tokenizer, QUESTIONS, sampling, reference=policy)
    assert frame["kl"].abs().max() > 0.01
    # The same samples again (same seed), then every answer's KL the long way: one unpadded row each.
    rollout = generate(moved, tokenizer, QUESTIONS, 40, temperature, torch.Generator().manual_seed(seed))
    assert rollout.texts == list(frame["answer"])
    for i, question in enumerate(QUESTIONS):
        prompt_ids = tokenizer.encode(format_prompt(question))
        answer_ids = rollout.response_ids[i][rollout.response_mask[i].bool()].tolist()
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logp = F.log_softmax(moved(input_ids=ids).logits[0].double() / temperature, -1)
            ref_logp = F.log_softmax(policy(input_ids=ids).logits[0].double() / temperature, -1)
        positions = range(len(prompt_ids), ids.shape[1])  # token t is predicted at t - 1
        log_ratios = [(ref_logp[t - 1, ids[0, t]] - logp[t - 1, ids[0, t]]).item() for t in positions]
        assert frame["kl"].iloc[i] == pytest.approx(-sum(log_ratios), abs=1e-3)
        assert frame["kl_k3"].iloc[i] == pytest.approx(sum(math.expm1(x) - x for x in log_ratios), abs=1e-3)


def test_measured_scores_are_the_judge_and_the_reward_model(models):
    policy, tokenizer, reward_model = models
    frame = measure_policy(policy, tokenizer, QUESTIONS, CFG, reference=policy, reward_model=reward_model)
    for _, row in frame.iterrows():
        assert row["total"] == judge(row["prompt"], row["answer"], row["finished"]).total
    finished = frame[frame["finished"]]
    rescored = score_answers(reward_model, tokenizer, list(finished["prompt"]), list(finished["answer"]))
    assert torch.allclose(torch.tensor(finished["reward"].to_numpy(), dtype=torch.float32), rescored, atol=1e-4)


def test_frontier_point_means_and_shares():
    frame = pd.DataFrame({
        "prompt": ["a", "b", "c", "d"], "family": ["harmful", "harmful", "greeting", "greeting"],
        "answer": ["x"] * 4, "finished": [True, True, True, False], "total": [3.0, 1.0, 2.0, 0.0],
        "flags": ["refused", "harmful", "flattery,too_long", "malformed,repetitive"], "words": [4, 10, 20, 30],
        "kl": [0.0, 1.0, 2.0, 5.0], "kl_k3": [0.0, 1.0, 1.0, 2.0], "reward": [1.0, 2.0, 3.0, 4.0],
        "flattery": [0, 0, 2, 0], "flawed": [False, True, False, True],
    })
    point = frontier_point(frame)
    assert point["true_score"] == 1.5 and point["reward"] == 2.5 and point["kl"] == 2.0 and point["kl_k3"] == 1.0
    assert point["words"] == 16.0 and point["flattery"] == 0.25 and point["too_long"] == 0.25
    assert point["repetitive"] == 0.25 and point["padded"] == 0.0 and point["finished_rate"] == 0.75
    assert point["refusal_rate_harmful"] == 0.5 and point["harmful_not_refused"] == 0.5
