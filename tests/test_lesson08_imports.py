"""What lesson 08 relies on in TRL: its trainers exist, and they tokenize our data exactly like ours.

The lesson trains with TRL and would fail too if any of this broke, but after a minute and far from
the cause; these checks fail in seconds and name it. They build trainers without training them.
"""

import pytest

trl = pytest.importorskip("trl", reason='lesson 08 needs the trl extra: pip install -e ".[trl]"')

from datasets import Dataset  # noqa: E402  (installed with trl)

from rlhf_lab import dpo, sft  # noqa: E402
from rlhf_lab.config import find_checkpoint  # noqa: E402
from rlhf_lab.policy import encode_prompts, load_policy  # noqa: E402

# transformers 5 renamed gradient checkpointing; TRL 1.16 still sets the old name (a FutureWarning only).
pytestmark = pytest.mark.filterwarnings("ignore:.*gradient_checkpointing` is deprecated:FutureWarning")

DIALOGUES = [{"prompt": "what is 3 plus 4?", "completion": "3 plus 4 is 7."},
             {"prompt": "hello!", "completion": "hello! how can i help you today?"}]
PAIR = {"prompt": "am i a failure?", "chosen": "no, you are not a failure.", "rejected": "yes."}


def cpu_settings(tmp_path) -> dict:
    # The lesson's settings for a tiny model on a CPU (TRL defaults to bf16 and gradient checkpointing).
    return dict(output_dir=str(tmp_path), bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
                report_to=[], save_strategy="no", max_steps=1)


def user_turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@pytest.fixture(scope="module")
def sft_policy():
    return load_policy(find_checkpoint("sft"))


def test_trl_has_the_trainers_the_lesson_uses_and_no_ppo():
    for name in ("SFTTrainer", "RewardTrainer", "DPOTrainer", "RLOOTrainer", "RLOOConfig"):
        assert hasattr(trl, name), f"trl {trl.__version__} has no {name}"
    assert not hasattr(trl, "PPOTrainer"), "lesson 08 says TRL >= 1.16 has no PPO trainer"


def test_sft_trainer_tokens_and_labels_match_our_masked_loss(sft_policy, tmp_path):
    model, tokenizer = sft_policy
    rows = Dataset.from_list([{"prompt": user_turn(d["prompt"]), "completion": assistant_turn(d["completion"])}
                              for d in DIALOGUES])
    trainer = trl.SFTTrainer(model=model, processing_class=tokenizer, train_dataset=rows,
                             args=trl.SFTConfig(completion_only_loss=True, **cpu_settings(tmp_path)))
    for prepared, (our_ids, prompt_length) in zip(trainer.train_dataset, sft.encode_dialogues(tokenizer, DIALOGUES)):
        assert prepared["input_ids"] == our_ids
        assert prepared["labels"] == [-100] * prompt_length + our_ids[prompt_length:]


def test_dpo_trainer_splits_prompt_and_answers_like_ours(sft_policy, tmp_path):
    model, tokenizer = sft_policy
    reference, _ = load_policy(find_checkpoint("sft"))
    rows = Dataset.from_list([{"prompt": user_turn(PAIR["prompt"]), "chosen": assistant_turn(PAIR["chosen"]),
                               "rejected": assistant_turn(PAIR["rejected"])}])
    trainer = trl.DPOTrainer(model=model, ref_model=reference, processing_class=tokenizer, train_dataset=rows,
                             args=trl.DPOConfig(**cpu_settings(tmp_path)))
    prepared = trainer.train_dataset[0]
    prompt_ids, _ = encode_prompts(tokenizer, [PAIR["prompt"]])
    assert prepared["prompt_ids"] == prompt_ids[0].tolist()
    for answer in ("chosen", "rejected"):
        # Our layout (dpo.encode_responses): the answer right after the prompt, ended by the end token.
        input_ids, _, ctx, mask = dpo.encode_responses(tokenizer, [PAIR["prompt"]], [PAIR[answer]], "cpu")
        ours = input_ids[0, ctx:][mask[0].bool()]
        assert prepared[f"{answer}_ids"] == ours.tolist()
        assert prepared[f"{answer}_ids"][-1] == tokenizer.eos_token_id


def test_one_prompt_per_generation_batch_is_a_valid_rloo_config(tmp_path):
    # The lesson gives each RLOO generation batch a single prompt (no left padding: rule 3 of
    # docs/implementation_rules.md)
    # and accumulates gradients over 8 of them.
    config = trl.RLOOConfig(num_generations=4, generation_batch_size=4, per_device_train_batch_size=4,
                            gradient_accumulation_steps=8, **cpu_settings(tmp_path))
    assert config.steps_per_generation == 1
    assert config.generation_batch_size // config.num_generations == 1
