"""The shipped corpora are reproducible from their seed, and bad files fail clearly."""

import filecmp

import pytest

from rlhf_lab import data, world
from rlhf_lab.jsonl import DataFormatError
from rlhf_lab.judge import judge


def test_shipped_corpora_are_exactly_what_the_generator_makes(tmp_path):
    paths = data.generate_corpora(tmp_path)
    for name, path in paths.items():
        assert filecmp.cmp(path, data.world_file(name), shallow=False), \
            f"{name}.jsonl differs: run `python -m rlhf_lab data`"


def test_a_different_seed_gives_different_data(tmp_path):
    small = dict(n_pretrain=50, n_sft=20, n_prompts=20, n_eval_per_family=2)
    a = data.generate_corpora(tmp_path / "a", data.CorpusConfig(seed=1, **small))
    b = data.generate_corpora(tmp_path / "b", data.CorpusConfig(seed=2, **small))
    again = data.generate_corpora(tmp_path / "c", data.CorpusConfig(seed=1, **small))
    assert not filecmp.cmp(a["pretrain"], b["pretrain"], shallow=False)
    assert filecmp.cmp(a["pretrain"], again["pretrain"], shallow=False)


def test_sft_demonstrations_leave_gaps_and_carry_a_few_mistakes():
    rows = data.load_dialogues(data.world_file("sft"))
    families = {row["family"] for row in rows}
    assert families.isdisjoint(data.SFT_UNCOVERED_FAMILIES)
    flawed = [row for row in rows if judge(row["prompt"], row["completion"]).flawed]
    assert 0.01 < len(flawed) / len(rows) < 0.1


def test_pretraining_mix_has_every_family_and_style():
    rows = data.load_dialogues(data.world_file("pretrain"))
    assert {row["family"] for row in rows} == set(world.FAMILIES)
    assert {row["style"] for row in rows} == set(world.STYLES)


def test_eval_prompts_cover_every_template_including_those_sft_never_shows():
    held_out = data.load_prompts(data.world_file("eval_prompts"))
    templates = {world.parse_prompt(row["prompt"]).template for row in held_out}
    assert templates == {template for _, template, _ in world.TEMPLATES}
    per_family = {family: sum(row["family"] == family for row in held_out) for family in world.FAMILIES}
    assert set(per_family.values()) == {40}


def test_every_corpus_word_is_in_the_vocabulary():
    vocabulary = set(data.vocabulary())
    rows = data.load_dialogues(data.world_file("pretrain")) + data.load_prompts(data.world_file("eval_prompts"))
    for row in rows:
        for text in (row["prompt"], row.get("completion", "")):
            assert set(world.words_of(text)) <= vocabulary


def test_malformed_dialogue_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "demos.jsonl"
    bad.write_text('{"prompt": "hi!", "completion": "hello!"}\n{"prompt": "hi!", "completion": 3}\n')
    with pytest.raises(DataFormatError) as error:
        data.load_dialogues(bad)
    message = str(error.value)
    assert "demos.jsonl" in message and "line 2" in message and "'completion'" in message


def test_unknown_family_in_prompt_file_is_named(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hi!", "family": "poetry"}\n')
    with pytest.raises(ValueError, match="family"):
        data.load_prompts(bad)
