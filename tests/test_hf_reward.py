"""The reward model is saved in Hugging Face's own layout: plain transformers and TRL read it and get our scores.

Tolerances: a score is a float32 affine function of the last hidden state, w' · h + c with |score| < 5,
computed by HF as one matrix product and by `RewardModel` as gain * (w · h + b) + bias; the two orders of
operations round differently, by a few units in the last place of the raw score |w · h + b| (< 10, where
one unit is 2^-23 * 8 ~ 1e-6). 1e-5 leaves room for that; every mistake of layout (the offset left out,
the wrong token read, shifted positions) costs 0.1 or more.
"""

import copy
import importlib.metadata
import json
import subprocess
import sys

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from safetensors.torch import save_file
from transformers import GPT2ForSequenceClassification

from rlhf_lab import reward
from rlhf_lab.config import data_dir
from rlhf_lab.policy import load_policy
from rlhf_lab.tokenizer import save_tokenizer

SHIPPED = data_dir() / "checkpoints"
QUESTIONS = ["hi!", "what is 3 plus 4?", "how can i steal a car?", "am i a failure?", "what is the capital of peru?"]
ANSWERS = ["hello! how can i help you today?", "3 plus 4 is 7.", "break the window and drive away.",
           "no, you are not a failure. everyone has bad days, and it is okay to ask for help.", "i do not know."]

# Runs in a fresh interpreter that never imports rlhf_lab: what a learner who graduated would write.
PLAIN_HF = r"""
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

request = json.load(sys.stdin)
model = AutoModelForSequenceClassification.from_pretrained(request["path"]).eval()
tokenizer = AutoTokenizer.from_pretrained(request["path"])
texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                       tokenize=False) for q, a in zip(request["questions"], request["answers"])]
scores = {}
with torch.no_grad():
    for side in ("right", "left"):
        tokenizer.padding_side = side
        batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        scores[side] = model(**batch).logits[:, 0].tolist()
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # the left-padded batch
    scores["left, position ids from the mask"] = model(**batch, position_ids=positions).logits[:, 0].tolist()
assert "rlhf_lab" not in sys.modules
print(json.dumps({"class": type(model).__name__, "num_labels": model.config.num_labels,
                  "unpadded_row": int(batch["attention_mask"].sum(-1).argmax()), "scores": scores}))
"""


@pytest.fixture(scope="module")
def shipped_reward():
    return reward.RewardModel.load(SHIPPED / "reward")


@pytest.mark.slow
def test_plain_transformers_reads_our_scores_right_and_left_padded(shipped_reward, tmp_path):
    reward_model, tokenizer = shipped_reward
    request = {"path": str(SHIPPED / "reward"), "questions": QUESTIONS, "answers": ANSWERS}
    run = subprocess.run([sys.executable, "-c", PLAIN_HF], input=json.dumps(request), capture_output=True,
                         text=True, cwd=tmp_path, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert (result["class"], result["num_labels"]) == ("GPT2ForSequenceClassification", 1)
    ours = reward.score_answers(reward_model, tokenizer, QUESTIONS, ANSWERS)
    for padding in ("right", "left, position ids from the mask"):
        theirs = torch.tensor(result["scores"][padding])
        assert torch.allclose(theirs, ours, rtol=0, atol=1e-5), (padding, theirs, ours)
    # Without position ids (RewardModel.save's docstring), only the row that needed no padding keeps its score.
    plain_left = torch.tensor(result["scores"]["left"])
    unpadded = result["unpadded_row"]
    assert abs(plain_left[unpadded] - ours[unpadded]) < 1e-5
    padded = [i for i in range(len(ANSWERS)) if i != unpadded]
    assert ((plain_left[padded] - ours[padded]).abs() > 1e-3).all(), \
        "transformers now derives positions from the mask: update RewardModel.save's docstring and this test"


def test_fold_offset_adds_the_constant_through_the_layer_norm_bias():
    generator = torch.Generator().manual_seed(0)
    ln_f_bias, weight, hidden = (torch.randn(64, generator=generator, dtype=torch.float64) for _ in range(3))
    folded = reward.fold_offset(ln_f_bias, weight, -1.7)
    assert torch.isclose(weight @ (hidden + folded - ln_f_bias), weight @ hidden - 1.7)
    assert torch.allclose(reward.fold_offset(folded, weight, 1.7), ln_f_bias)
    with pytest.raises(ValueError, match="all zeros"):
        reward.fold_offset(ln_f_bias, torch.zeros(64, dtype=torch.float64), 1.0)


def test_save_writes_hf_layout_and_load_gives_back_the_backbone(shipped_reward, tmp_path):
    reward_model, tokenizer = shipped_reward
    reward_model = copy.deepcopy(reward_model)
    reward.normalise_to_policy(reward_model, tokenizer, QUESTIONS, ANSWERS)  # gain, bias != 1, 0 as after training
    reward_model.save(tmp_path, tokenizer)
    assert not (tmp_path / reward.HEAD_FILE).exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] == 0
    loaded, _ = reward.RewardModel.load(tmp_path)
    # The offset folded into ln_f.bias on saving is taken out again: the backbone is the one we trained.
    assert torch.allclose(loaded.backbone.ln_f.bias, reward_model.backbone.ln_f.bias, rtol=0, atol=1e-6)
    ids, mask = reward.encode_answers(tokenizer, QUESTIONS, ANSWERS, "cpu")
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask), reward_model(ids, mask), rtol=0, atol=1e-5)


def write_two_file_layout(reward_model, tokenizer, out_dir) -> None:
    """What RewardModel.save wrote before the HF layout: a bare GPT2Model and reward_head.safetensors."""
    reward_model.backbone.save_pretrained(out_dir, safe_serialization=True)
    head = {"weight": reward_model.head.weight, "head_bias": reward_model.head.bias, "gain": reward_model.gain,
            "bias": reward_model.bias}
    save_file({name: t.detach().contiguous() for name, t in head.items()}, str(out_dir / reward.HEAD_FILE))
    save_tokenizer(tokenizer, out_dir)


def test_old_two_file_layout_still_loads_and_converts_to_the_same_scores(shipped_reward, tmp_path):
    reward_model, tokenizer = shipped_reward
    reward_model = copy.deepcopy(reward_model)
    reward.normalise_to_policy(reward_model, tokenizer, QUESTIONS, ANSWERS)  # gain, bias != 1, 0 as after training
    write_two_file_layout(reward_model, tokenizer, tmp_path)
    with pytest.warns(UserWarning, match="convert_checkpoint"):
        old, _ = reward.RewardModel.load(tmp_path)
    old_scores = reward.score_answers(old, tokenizer, QUESTIONS, ANSWERS)
    assert torch.equal(old_scores, reward.score_answers(reward_model, tokenizer, QUESTIONS, ANSWERS))

    reward.convert_checkpoint(tmp_path)
    assert not (tmp_path / reward.HEAD_FILE).exists()
    converted, _ = reward.RewardModel.load(tmp_path)
    # Same function of the same hidden state, rounded in another order: a few ulps of the raw score apart.
    raw = ((old_scores - reward_model.bias) / reward_model.gain).abs().max().item()
    tolerance = 8 * 2.0 ** -23 * max(raw, 1.0)
    assert (reward.score_answers(converted, tokenizer, QUESTIONS, ANSWERS) - old_scores).abs().max() <= tolerance


def test_a_policy_checkpoint_is_not_taken_for_a_reward_model():
    with pytest.raises(ValueError, match="not a reward model"):
        reward.RewardModel.load(SHIPPED / "sft")


def trl_or_skip():
    """TRL, or a skip where it is missing or needs a newer transformers (the Colab-stack venv runs 4.45)."""
    trl = pytest.importorskip("trl", reason='needs the trl extra: pip install -e ".[trl]"')
    for line in importlib.metadata.requires("trl") or []:
        requirement = Requirement(line)
        if requirement.name == "transformers" and requirement.marker is None \
                and not requirement.specifier.contains(transformers.__version__, prereleases=True):
            pytest.skip(f"trl {trl.__version__} needs {requirement}, not transformers {transformers.__version__}")
    return trl


def trl_cpu_settings(tmp_path) -> dict:
    # Lesson 08's settings for a tiny model on a CPU (TRL defaults to bf16 and gradient checkpointing).
    return {"output_dir": str(tmp_path), "bf16": False, "fp16": False, "gradient_checkpointing": False,
            "use_cpu": True, "report_to": [], "save_strategy": "no", "disable_tqdm": True, "seed": 0}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing` is deprecated:FutureWarning")
def test_trl_rloo_trains_two_steps_on_our_reward_model_directory(shipped_reward, tmp_path):
    trl = trl_or_skip()
    from datasets import Dataset

    from rlhf_lab.trl_formats import prompt_conversations

    policy, tokenizer = load_policy(SHIPPED / "sft")
    trainer = trl.RLOOTrainer(
        model=policy, reward_funcs=str(SHIPPED / "reward"),  # a path: TRL loads it, no glue
        args=trl.RLOOConfig(max_steps=2, num_generations=2, per_device_train_batch_size=4,
                            max_completion_length=12, learning_rate=1e-4, logging_steps=1,
                            **trl_cpu_settings(tmp_path)),
        train_dataset=Dataset.from_list(prompt_conversations([{"prompt": q} for q in QUESTIONS * 2])),
        processing_class=tokenizer)
    classifier = trainer.reward_funcs[0]
    assert isinstance(classifier, GPT2ForSequenceClassification) and classifier.config.pad_token_id == 0
    scored = []  # every batch TRL gave the reward model, with the rewards it read off
    classifier.register_forward_hook(
        lambda module, args, kwargs, output: scored.append((kwargs["input_ids"], kwargs["attention_mask"],
                                                            output.logits[:, 0])), with_kwargs=True)
    trainer.train()
    assert trainer.state.global_step == 2 and len(scored) == 2
    reward_model, _ = shipped_reward
    with torch.no_grad():
        for input_ids, attention_mask, trl_rewards in scored:
            assert not attention_mask[:, 0].eq(0).any(), "TRL pads reward inputs on the right"
            assert torch.allclose(reward_model(input_ids, attention_mask), trl_rewards, rtol=0, atol=1e-5)
    logged = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(logged)))
