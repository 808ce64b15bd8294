"""Our rows exported in TRL's conversational formats: TRL tokenizes them exactly as our trainers do.

Each test builds a TRL trainer (no training): its constructor runs TRL's own dataset preparation
(chat template, tokenization, labels), and we compare what it prepared, token for token, with what
our SFT, DPO and reward-model trainers feed their models.
"""

import pytest
from transformers import AutoModelForSequenceClassification

from rlhf_lab import data, dpo, reward, sft, trl_formats
from rlhf_lab.config import data_dir
from rlhf_lab.policy import load_policy
from rlhf_lab.preferences import PreferenceRecord, PreferenceStore

trl = pytest.importorskip("trl", reason='needs the trl extra: pip install -e ".[trl]"')
datasets = pytest.importorskip("datasets", reason='needs the trl extra: pip install -e ".[trl]"')

# transformers 5 renamed gradient checkpointing; TRL 1.16 still sets the old name (a FutureWarning only).
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing` is deprecated:FutureWarning")
SHIPPED = data_dir() / "checkpoints"


def cpu_settings(tmp_path) -> dict:
    # Lesson 08's settings for a tiny model on a CPU (TRL defaults to bf16 and gradient checkpointing).
    return {"output_dir": str(tmp_path), "bf16": False, "fp16": False, "gradient_checkpointing": False,
            "use_cpu": True, "report_to": [], "save_strategy": "no", "max_steps": 1}


@pytest.fixture(scope="module")
def sft_policy():
    return load_policy(SHIPPED / "sft")


@pytest.fixture(scope="module")
def records():
    """Shipped simulated labels, plus what the exporter must handle: a learner's label and a tie.

    (A record of two identical answers cannot exist: PreferenceRecord refuses it.)"""
    shipped = PreferenceStore(data.world_file("preferences")).records[:60]
    extra = [PreferenceRecord("am i a failure?", "no, you are not a failure.", "yes.", source="human"),
             PreferenceRecord("hi!", "hello!", "hi! how can i help?", source="human", tie=True)]
    return shipped + extra


def unpadded(ids, keep) -> list[int]:
    return ids[keep.bool()].tolist()


def test_sft_messages_give_our_ids_and_loss_mask(sft_policy, tmp_path):
    model, tokenizer = sft_policy
    rows = data.load_dialogues(data.world_file("sft"))[:64]
    exported = trl_formats.sft_conversations(rows)
    assert exported[0]["messages"] == [{"role": "user", "content": rows[0]["prompt"]},
                                       {"role": "assistant", "content": rows[0]["completion"]}]
    trainer = trl.SFTTrainer(model=model, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(exported),
                             args=trl.SFTConfig(assistant_only_loss=True, **cpu_settings(tmp_path)))
    # Our SFT batch: left-padded ids, and the loss mask on the answer and its end token.
    input_ids, attention_mask, loss_mask = sft.collate(sft.encode_dialogues(tokenizer, rows), tokenizer.pad_token_id,
                                                       response_only=True)
    assert len(trainer.train_dataset) == len(rows)
    for prepared, ids, real, targets in zip(trainer.train_dataset, input_ids, attention_mask, loss_mask):
        ours = unpadded(ids, real)
        assert prepared["input_ids"] == ours
        our_labels = [token if target else -100 for token, target in zip(ours, unpadded(targets, real))]
        assert prepared["labels"] == our_labels


def test_preference_export_leaves_out_ties_and_identical_answers_and_keeps_weights(records):
    rows = trl_formats.preference_conversations(records, learner_weight=2.0)
    pairs = reward.pairs_from_records(records, learner_weight=2.0)
    assert len(rows) == len(pairs) == len(records) - 1  # the tie
    assert rows[-1] == {"prompt": [{"role": "user", "content": "am i a failure?"}],
                        "chosen": [{"role": "assistant", "content": "no, you are not a failure."}],
                        "rejected": [{"role": "assistant", "content": "yes."}], "weight": 2.0}
    assert {row["weight"] for row in rows[:-1]} == {1.0}
    identical = {"prompt": "hi!", "chosen": "hello!", "rejected": "hello!"}  # plain rows may hold any pair
    assert trl_formats.pair_conversations([identical]) == []
    with pytest.raises(ValueError, match="row 1 has no field 'chosen'"):
        trl_formats.pair_conversations([{"prompt": "hi!", "rejected": "no."}])


def test_dpo_trainer_tokenizes_exported_pairs_like_our_dpo(sft_policy, records, tmp_path):
    model, tokenizer = sft_policy
    reference, _ = load_policy(SHIPPED / "sft")
    pairs = reward.pairs_from_records(records, learner_weight=2.0)
    trainer = trl.DPOTrainer(model=model, ref_model=reference, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(trl_formats.preference_conversations(records)),
                             args=trl.DPOConfig(**cpu_settings(tmp_path)))
    prepared = list(trainer.train_dataset)
    prompts = [p["prompt"] for p in pairs]
    for side in ("chosen", "rejected"):
        # Our DPO batch (dpo.encode_responses): left-padded prompt, then the answer and its end token.
        input_ids, attention_mask, ctx, response_mask = dpo.encode_responses(
            tokenizer, prompts, [p[side] for p in pairs], "cpu")
        for row, ids, real, answer in zip(prepared, input_ids, attention_mask, response_mask):
            assert row["prompt_ids"] == unpadded(ids[:ctx], real[:ctx])
            assert row[f"{side}_ids"] == unpadded(ids[ctx:], answer)
    assert "weight" not in next(iter(trainer.get_train_dataloader())), "TRL drops the weight column"


def test_reward_trainer_tokenizes_exported_pairs_like_our_reward_model(records, tmp_path):
    _, tokenizer = load_policy(SHIPPED / "sft")
    classifier = AutoModelForSequenceClassification.from_pretrained(SHIPPED / "reward")  # our reward model
    pairs = reward.pairs_from_records(records, learner_weight=2.0)
    trainer = trl.RewardTrainer(model=classifier, processing_class=tokenizer,
                                train_dataset=datasets.Dataset.from_list(trl_formats.preference_conversations(records)),
                                args=trl.RewardConfig(**cpu_settings(tmp_path)))
    prepared = list(trainer.train_dataset)
    prompts = [p["prompt"] for p in pairs]
    for side in ("chosen", "rejected"):
        # Our reward-model batch (reward.encode_answers): the whole left-padded dialogue.
        input_ids, attention_mask = reward.encode_answers(tokenizer, prompts, [p[side] for p in pairs], "cpu")
        for row, ids, real in zip(prepared, input_ids, attention_mask):
            assert row[f"{side}_ids"] == unpadded(ids, real)
    assert "weight" not in next(iter(trainer.get_train_dataloader())), "TRL drops the weight column"
