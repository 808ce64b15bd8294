"""A checkpoint says what made it: provenance in metrics.json, a model card, the course's sampling settings.

And the files beside the weights work with plain `transformers`: the tokenizer stops at the model's
192 positions, `generation_config.json` samples as `policy.generate` does, `pipeline` answers.
"""

import hashlib
import json
import re
import shutil
import subprocess

import pytest
import torch
import transformers
from transformers import AutoTokenizer, GenerationConfig, pipeline

import rlhf_lab
from rlhf_lab import maintain, provenance, stages
from rlhf_lab.config import REPO_DIR, SAMPLING_TEMPERATURE, data_dir, pick_device
from rlhf_lab.policy import N_POSITIONS, save_policy
from rlhf_lab.tokenizer import LOADING_KEYS, format_prompt


@pytest.fixture
def saved_sft(sft, tmp_path):
    """The shipped SFT policy, saved again by `save_policy` into a fresh folder."""
    model, tokenizer = sft
    save_policy(model, tokenizer, tmp_path / "sft")
    return tmp_path / "sft"


def test_generation_config_holds_the_course_sampling_settings(saved_sft, sft):
    settings = GenerationConfig.from_pretrained(saved_sft)
    _, tokenizer = sft
    assert settings.do_sample is True and settings.temperature == SAMPLING_TEMPERATURE == 0.7
    assert settings.top_k == 0 and settings.top_p == 1.0, "plain temperature sampling (rule 2): no truncation"
    assert settings.max_new_tokens == 64
    assert settings.eos_token_id == tokenizer.eos_token_id and settings.pad_token_id == tokenizer.pad_token_id
    assert settings.pad_token_id != settings.eos_token_id


def test_the_saved_tokenizer_stops_at_the_models_positions_and_keeps_no_loading_keys(saved_sft):
    config = json.loads((saved_sft / "tokenizer_config.json").read_text())
    assert not set(LOADING_KEYS) & set(config), "keys describing where it was loaded from"
    tokenizer = AutoTokenizer.from_pretrained(saved_sft)
    assert tokenizer.model_max_length == N_POSITIONS == 192
    words = " ".join(f"word{i}" for i in range(300))
    ids = tokenizer(format_prompt(words), truncation=True)["input_ids"]
    assert len(ids) == N_POSITIONS
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|user|>"), "truncation cuts the end, keeps the start"


def test_a_plain_transformers_pipeline_answers_with_our_settings(saved_sft):
    chat = pipeline("text-generation", model=str(saved_sft))
    assert chat.model.generation_config.temperature == SAMPLING_TEMPERATURE
    torch.manual_seed(0)
    reply = chat([{"role": "user", "content": "hi!"}])[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and reply["content"].strip()
    long_prompt = format_prompt("hi! " * 150)  # 300 tokens: more than the model's 192 positions
    torch.manual_seed(0)
    text = chat(long_prompt, handle_long_generation="hole")[0]["generated_text"]  # an IndexError before
    assert text.startswith("<|user|>")


def test_every_saved_checkpoint_gets_a_model_card(saved_sft, reward_model, sft, tmp_path):
    card = (saved_sft / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert 'folder = "sft"' in card, "the card names the checkpoint's folder, not the save's staging folder"
    assert f"{provenance.parameter_count(saved_sft):,} parameters" in card
    parameters = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(saved_sft).parameters())
    assert provenance.parameter_count(saved_sft) == parameters
    _, tokenizer = sft
    reward_model.save(tmp_path / "reward", tokenizer)
    reward_card = (tmp_path / "reward" / "README.md").read_text()
    assert "pipeline_tag: text-classification" in reward_card and "AutoModelForSequenceClassification" in reward_card
    assert 'folder = "reward"' in reward_card


def test_run_record_names_inputs_versions_and_commit(tmp_path):
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text('{"prompt": "hi!"}\n')
    record = provenance.run_record("sft", scale="ci", device=torch.device("cpu"), seed=3,
                                   inputs={"policy": data_dir() / "checkpoints" / "base", "data": data_file, "x": None})
    assert (record["stage"], record["scale"], record["device"], record["seed"]) == ("sft", "ci", "cpu", 3)
    assert set(record["inputs"]) == {"policy", "data"}, "None inputs are left out"
    weights = data_dir() / "checkpoints" / "base" / "model.safetensors"
    assert record["inputs"]["policy"]["sha256"] == provenance.file_digest(weights)
    assert record["inputs"]["data"]["sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()[:16]
    assert record["versions"] == {"python": record["versions"]["python"], "rlhf_lab": rlhf_lab.__version__,
                                  "torch": torch.__version__, "transformers": transformers.__version__}
    if (REPO_DIR / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", record["git_commit"]) and isinstance(record["git_dirty"], bool)
    json.dumps(record)  # it goes into metrics.json


def test_without_git_or_outside_a_clone_the_commit_is_none(tmp_path, monkeypatch):
    assert provenance.git_state(tmp_path) == (None, None), "not a clone (and never a parent folder's)"
    (tmp_path / ".git").mkdir()

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert provenance.git_state(tmp_path) == (None, None)
    record = provenance.run_record("sft", scale="ci", device="cpu", seed=0, inputs={})
    assert record["git_commit"] is None


def test_the_shipped_checkpoints_side_files_are_up_to_date_and_refreshing_leaves_the_weights(tmp_path):
    shipped = data_dir() / "checkpoints"
    copy = tmp_path / "checkpoints"
    shutil.copytree(shipped, copy)
    assert maintain.refresh_shipped_checkpoints(copy) == [], "run  python -m rlhf_lab.maintain checkpoints"
    # A stale folder, as saved before: loading keys, an unbounded length, no card, transformers' sampling defaults.
    stale = copy / "sft"
    config = json.loads((stale / "tokenizer_config.json").read_text())
    config.update(is_local=True, local_files_only=False, model_max_length=int(1e30))
    (stale / "tokenizer_config.json").write_text(json.dumps(config))
    (stale / "generation_config.json").write_text(json.dumps({"bos_token_id": 4, "eos_token_id": 4}))
    (stale / "README.md").unlink()
    weights, model_config = (stale / "model.safetensors").read_bytes(), (stale / "config.json").read_bytes()
    changed = maintain.refresh_checkpoint(stale)
    assert sorted(changed) == ["README.md", "generation_config.json", "tokenizer_config.json"]
    assert (stale / "model.safetensors").read_bytes() == weights
    assert (stale / "config.json").read_bytes() == model_config
    assert AutoTokenizer.from_pretrained(stale).model_max_length == N_POSITIONS
    assert maintain.refresh_checkpoint(stale) == []
    for name in ("base", "sft", "reward"):
        card = (shipped / name / "README.md").read_text()
        figure = "| heldout_accuracy |" if name == "reward" else "| mean_score |"
        assert "## Evaluation" in card and figure in card, name


@pytest.mark.slow
def test_a_stage_records_its_provenance_and_writes_the_card(tmp_path, shipped):
    out = tmp_path / "sft"
    metrics = stages.train_lm_stage(out, stage="sft", scale="ci", policy_dir=shipped / "base", steps=2, seed=7,
                                    progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    record = saved.pop("provenance")
    assert saved == json.loads(json.dumps(metrics)), "the figures as returned, plus the provenance"
    device = str(pick_device())
    assert (record["stage"], record["scale"], record["device"], record["seed"]) == ("sft", "ci", device, 7)
    assert set(record["inputs"]) == {"policy", "data", "eval_prompts"}
    assert record["inputs"]["policy"]["sha256"] == provenance.file_digest(shipped / "base" / "model.safetensors")
    assert record["inputs"]["data"]["path"] == str((data_dir() / "world" / "sft.jsonl").resolve())
    card = (out / "README.md").read_text()
    assert f"stage: `sft`, scale `ci`, device `{device}`, seed 7" in card
    assert f"| mean_score | {metrics['mean_score']:.4g} |" in card
    assert "`steps=2`" in card
