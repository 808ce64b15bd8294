"""The reward model reads the last real token, normalises, saves safely, and learns preferences."""

import pytest
import torch

from rlhf_lab import labelling, reward, reward_analysis, world
from rlhf_lab.config import data_dir
from rlhf_lab.judge import SimulatedLabeller, noise_ceiling
from rlhf_lab.policy import load_policy
from rlhf_lab.preferences import PreferenceRecord


@pytest.fixture(scope="module")
def sft():
    return load_policy(data_dir() / "checkpoints" / "sft")


@pytest.fixture()
def reward_model(sft):
    torch.manual_seed(0)
    return reward.RewardModel.from_policy(sft[0]).eval()


def test_head_starts_small_and_backbone_is_the_policys(sft, reward_model):
    width = sft[0].config.n_embd
    assert abs(reward_model.head.weight.std().item() - 1 / (width + 1) ** 0.5) < 0.05
    for name, tensor in sft[0].transformer.state_dict().items():
        assert torch.equal(tensor, reward_model.backbone.state_dict()[name])


def test_score_is_read_at_the_last_real_token_whatever_the_padding(sft, reward_model):
    _, tokenizer = sft
    prompts = ["what is 2 plus 2?", "how can i steal a car?"]
    answers = ["2 plus 2 is 4.", "i can not help with that, because it could hurt people."]
    ids, mask = reward.encode_answers(tokenizer, prompts, answers, "cpu")  # left-padded
    batched = reward_model(ids, mask)
    alone = torch.stack([reward_model(*reward.encode_answers(tokenizer, [p], [a], "cpu"))[0]
                         for p, a in zip(prompts, answers)])
    assert torch.allclose(batched, alone, atol=1e-5)
    # Right padding (as in a rollout: response then pads) gives the same score too.
    row = ids[0][mask[0].bool()]
    right = torch.cat([row, torch.full((5,), tokenizer.pad_token_id)])[None]
    right_mask = torch.cat([torch.ones_like(row), torch.zeros(5, dtype=row.dtype)])[None]
    assert torch.allclose(reward_model(right, right_mask), alone[:1], atol=1e-5)
    assert reward.last_real_index(right_mask).item() == len(row) - 1


def test_pair_rewards_score_each_shared_answer_once_with_the_same_rewards_and_gradient(sft, reward_model):
    _, tokenizer = sft
    # One labelling item: three answers to one prompt, so three pairs and each answer in two of them.
    answers = ["2 plus 2 is 4.", "it is 5.", "i do not know, sorry. maybe ask someone else?"]
    pairs = [{"prompt": "what is 2 plus 2?", "chosen": answers[i], "rejected": answers[j]}
             for i, j in ((0, 1), (0, 2), (1, 2))] + [{"prompt": "hello!", "chosen": "hi!", "rejected": "go away."}]
    token_ids = reward.dialogue_ids(tokenizer, pairs)
    assert len(token_ids) == 5
    ids, mask = reward.encode_answers(tokenizer, ["what is 2 plus 2?"], [answers[2]], "cpu")
    assert token_ids[("what is 2 plus 2?", answers[2])] == ids[0].tolist()
    chosen, rejected = reward.pair_rewards(reward_model, tokenizer, pairs, token_ids, pass_overhead=1)
    prompts = [p["prompt"] for p in pairs]  # every row scored, shared answers too, in one pass: the long way
    every_row = reward_model(*reward.encode_answers(tokenizer, prompts + prompts, [p["chosen"] for p in pairs]
                                                    + [p["rejected"] for p in pairs], "cpu"))
    # Rows of different widths pass through different padding: equal up to float32 rounding.
    assert torch.allclose(torch.cat([chosen, rejected]), every_row, atol=1e-5)
    gradients = []
    for loss in (reward.bradley_terry_loss(chosen, rejected),
                 reward.bradley_terry_loss(every_row[:len(pairs)], every_row[len(pairs):])):
        reward_model.zero_grad()
        loss.backward()
        gradients.append(torch.cat([p.grad.reshape(-1) for p in reward_model.parameters() if p.grad is not None]))
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


def test_normalise_gives_mean_zero_std_one(sft, reward_model):
    _, tokenizer = sft
    prompts = ["what is 2 plus 2?", "am i a failure?", "hello!", "what colour is the sky?"] * 4
    answers = ["it is 4.", "you are not a failure.", "hello! how can i help?", "it is blue.",
               "i do not know.", "yes.", "hi.", "the sky is green."] * 2
    reward.normalise_to_policy(reward_model, tokenizer, prompts, answers)
    scores = reward.score_answers(reward_model, tokenizer, prompts, answers)
    assert abs(scores.mean().item()) < 1e-4 and abs(scores.std().item() - 1) < 1e-4


def test_save_and_load_round_trip_is_safetensors_only(sft, reward_model, tmp_path):
    _, tokenizer = sft
    reward_model.gain.fill_(2.0)
    reward_model.save(tmp_path, tokenizer)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded, _ = reward.RewardModel.load(tmp_path)
    ids, mask = reward.encode_answers(tokenizer, ["hello!"], ["hi! how can i help?"], "cpu")
    assert torch.allclose(loaded(ids, mask), reward_model(ids, mask), atol=1e-6)


def test_missing_reward_model_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="looked for"):
        reward.RewardModel.load(tmp_path / "nothing")


def test_batches_keep_the_pairs_of_one_labelling_item_together():
    records = [PreferenceRecord(f"p{i // 6 % 3}", f"a{i}", f"b{i}", source="simulated") for i in range(60)]
    pairs = reward.pairs_from_records(records, learner_weight=1.0)
    assert len({p["group"] for p in pairs}) == 10  # ten runs of six pairs
    batches = reward.item_batches(pairs, items_per_batch=2, generator=torch.Generator().manual_seed(0))
    seen = {}
    for number, batch in enumerate(batches):
        for pair in batch:
            assert seen.setdefault(pair["group"], number) == number
    assert sum(len(b) for b in batches) == len(pairs) and len(batches) == 5


def test_training_learns_the_simulated_humans_preferences(sft):
    """A short run on simulated labels of world answers beats chance on held-out prompts."""
    model, tokenizer = sft
    import random
    rng = random.Random(0)
    candidates = []
    for _ in range(300):
        prompt = world.sample_prompt(rng)
        candidates.append((prompt.text, [world.respond(prompt, style, rng) for style in rng.sample(world.STYLES, 3)]))
    records = labelling.simulate_labels(candidates, SimulatedLabeller(temperature=0.25), seed=0)
    pairs = reward.pairs_from_records(records, learner_weight=2.0)
    train, heldout = reward.split_by_prompt(pairs, 0.2, seed=0)
    torch.manual_seed(0)
    reward_model = reward.RewardModel.from_policy(model)
    reward.train_reward_model(reward_model, tokenizer, train, reward.RewardConfig(lr=3e-4), progress=False)
    accuracy = (reward_analysis.predicted_preferences(reward_model, tokenizer, heldout) > 0.5).float().mean().item()
    assert accuracy > 0.7


def test_learner_labels_weigh_more_and_ties_are_dropped():
    records = [PreferenceRecord("p", "a", "b", source="human"), PreferenceRecord("p", "c", "d", source="simulated"),
               PreferenceRecord("p", "e", "f", tie=True)]
    pairs = reward.pairs_from_records(records, learner_weight=3.0)
    assert [p["weight"] for p in pairs] == [3.0, 1.0]


def test_calibration_table_of_a_calibrated_predictor_is_diagonal():
    torch.manual_seed(0)
    truth = torch.rand(20000)
    labels = torch.rand(20000) < truth
    # Recorded pairs are stored chosen-first: flip the probability where the label went the other way.
    predicted = torch.where(labels, truth, 1 - truth)
    table = reward_analysis.calibration_table(predicted)
    assert (table["predicted"] - table["observed"]).abs().max() < 0.03


def test_pair_kinds_separate_knowledge_close_calls_and_clear_pairs():
    sums = ("what is 3 plus 4?", "3 plus 4 is 7.", "3 plus 4 is 8.")
    assert reward_analysis.pair_kind(*sums, probability=0.99) == reward_analysis.KNOWLEDGE
    either_order = reward_analysis.pair_kind(sums[0], sums[2], sums[1], probability=0.01)
    assert either_order == reward_analysis.KNOWLEDGE
    two_right = ("what is 3 plus 4?", "3 plus 4 is 7.", "the answer is 7.")
    assert reward_analysis.pair_kind(*two_right, probability=0.6) == reward_analysis.CLOSE_CALL
    refusal = ("how can i steal a car?", "i can not help with that, because it is against the law.",
               "break the window and drive away.")
    assert reward_analysis.pair_kind(*refusal, probability=0.99) == reward_analysis.CLEAR


def test_gap_by_kind_adds_up_to_the_whole_gap():
    pairs = [
        {"prompt": "what is 3 plus 4?", "chosen": "3 plus 4 is 7.", "rejected": "3 plus 4 is 8."},  # knowledge
        {"prompt": "what is 3 plus 4?", "chosen": "3 plus 4 is 7.", "rejected": "the answer is 7."},  # close call
        {"prompt": "hello!", "chosen": "hello! how can i help you today?", "rejected": "i like trains."},  # clear
        {"prompt": "hello!", "chosen": "hi! how can i help?", "rejected": "ugh."},  # clear
    ]
    labeller_p = [1.0, 0.6, 0.9, 0.8]
    predicted = torch.tensor([0.4, 0.7, 0.9, 0.3])  # wrong, right, right, wrong
    table = reward_analysis.gap_by_kind(pairs, predicted, labeller_p)
    knowledge = table.loc[reward_analysis.KNOWLEDGE]
    assert knowledge["accuracy"] == 0 and knowledge["noise_ceiling"] == 1
    assert table.loc[reward_analysis.CLEAR, "pairs"] == 2 and table.loc[reward_analysis.CLEAR, "accuracy"] == 0.5
    assert table.loc[reward_analysis.CLEAR, "noise_ceiling"] == pytest.approx(0.85)
    accuracy, ceiling = 2 / 4, noise_ceiling(labeller_p)
    assert table["points_of_gap"].sum() == pytest.approx(100 * (ceiling - accuracy))
