"""Best-of-n sampling with a real policy and reward model, the ladder of n, and its output folder."""

import json

import pytest
import torch
from world_questions import WORLD_QUESTIONS as QUESTIONS

from rlhf_lab import best_of_n, stages
from rlhf_lab.evaluate import eval_config, heldout_prompts
from rlhf_lab.policy import load_policy
from rlhf_lab.reward import RewardModel, score_answers


@pytest.fixture
def models(sft, reward_model):
    return (*sft, reward_model)


def test_the_chosen_answer_is_the_argmax_of_the_reward_model_over_its_candidates(models):
    policy, tokenizer, reward_model = models
    # A short length limit: some candidates never end, and pay the missing-end penalty.
    chosen = best_of_n.best_of_n_sample(policy, reward_model, tokenizer, QUESTIONS, n=6, max_new_tokens=10,
                                        generator=torch.Generator().manual_seed(0), missing_end_penalty=-1.0)
    assert list(chosen["prompt"]) == QUESTIONS
    assert not all(all(row) for row in chosen["candidate_finished"]), "the test needs unfinished candidates"
    for _, row in chosen.iterrows():
        assert len(row["candidates"]) == 6
        # Score every candidate again, as text, through the reward model's own scoring path.
        rescored = score_answers(reward_model, tokenizer, [row["prompt"]] * 6, row["candidates"])
        for j, finished in enumerate(row["candidate_finished"]):
            if finished:
                assert row["candidate_scores"][j] == pytest.approx(rescored[j].item(), abs=1e-4)
        assert row["choice"] == int(torch.tensor(row["candidate_scores"]).argmax())
        assert row["answer"] == row["candidates"][row["choice"]]
        assert row["finished"] == row["candidate_finished"][row["choice"]]
        penalty = 0.0 if row["finished"] else -1.0
        assert row["reward"] == pytest.approx(row["candidate_scores"][row["choice"]] - penalty, abs=1e-5)


def test_best_of_one_is_plain_sampling(models):
    policy, tokenizer, reward_model = models
    from rlhf_lab.policy import generate

    chosen = best_of_n.best_of_n_sample(policy, reward_model, tokenizer, QUESTIONS, n=1,
                                        generator=torch.Generator().manual_seed(3))
    plain = generate(policy, tokenizer, QUESTIONS, 64, 0.7, torch.Generator().manual_seed(3))
    assert list(chosen["answer"]) == plain.texts
    assert (chosen["choice"] == 0).all()


def test_the_ladder_reuses_one_pass_and_never_lowers_the_chosen_score(models):
    policy, tokenizer, reward_model = models
    candidates = best_of_n.best_of_n_sample(policy, reward_model, tokenizer, QUESTIONS, n=8,
                                            generator=torch.Generator().manual_seed(1))
    ladder = best_of_n.best_of_n_ladder(candidates, [1, 2, 4, 8])
    assert list(ladder[1]["answer"]) == [row[0] for row in candidates["candidates"]]
    assert list(ladder[8]["answer"]) == list(candidates["answer"])
    for smaller, larger in [(1, 2), (2, 4), (4, 8)]:
        assert (ladder[larger]["reward"].to_numpy() >= ladder[smaller]["reward"].to_numpy()).all()
    with pytest.raises(ValueError, match="needs that many candidates"):
        best_of_n.best_of_n_ladder(candidates, [16])


def test_bad_n_is_a_clear_error(models):
    policy, tokenizer, reward_model = models
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n.best_of_n_sample(policy, reward_model, tokenizer, QUESTIONS, n=0)


@pytest.mark.slow
def test_the_stage_writes_its_folder_and_evaluate_answers_with_best_of_n_from_it(tmp_path, shipped):
    out = tmp_path / "bon"
    metrics = stages.best_of_n_stage(out, scale="ci", policy_dir=shipped / "sft", reward_dir=shipped / "reward", n=4,
                                     progress=False)
    settings = json.loads((out / stages.BEST_OF_N_FILE).read_text())
    assert settings["n"] == 4 and settings["reward"] == str((shipped / "reward").resolve())
    history = (out / "history.csv").read_text().splitlines()
    assert history[0].startswith("n,kl,reward,true_score") and len(history) == 1 + 3  # n = 1, 2, 4
    assert metrics["kl"] == pytest.approx(best_of_n.best_of_n_kl(4))
    assert json.loads((out / "metrics.json").read_text())["n"] == 4
    # No policy weights in the folder: evaluating it must go through best-of-n sampling.
    assert not (out / "config.json").exists()
    cfg = eval_config("ci", seed=4321)
    prompts, families = heldout_prompts(cfg)
    judged = stages.measure_output(out, prompts[:12], families[:12], cfg)
    policy, tokenizer = load_policy(shipped / "sft")
    reward_model, _ = RewardModel.load(shipped / "reward")
    expected = best_of_n.best_of_n_sample(policy, reward_model, tokenizer, prompts[:12], 4,
                                          generator=torch.Generator().manual_seed(4321))
    assert list(judged["answer"]) == list(expected["answer"])
