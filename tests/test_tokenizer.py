"""The word-level tokenizer: exact round trips, special tokens, chat template, save and reload."""

import json

import pytest
from transformers import AutoTokenizer

from rlhf_lab.tokenizer import (
    ASSISTANT,
    END,
    PAD,
    PUNCTUATION,
    UNK,
    USER,
    build_tokenizer,
    format_dialogue,
    format_prompt,
    save_tokenizer,
)

WORLD_SENTENCES = [
    "what is 7 plus 5?",
    "first, i do not know.",
    "hello! how can i help you today?",
    "the capital of france is paris.",
    "dear boss: i resign. thank you for everything.",
    "i cannot help with that, but i can help you stay safe.",
    "12.",
    "am i a failure?",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(WORLD_SENTENCES)


@pytest.mark.parametrize("text", WORLD_SENTENCES)
def test_decode_gives_back_the_world_text_exactly(tokenizer, text):
    ids = tokenizer.encode(text)
    assert UNK not in tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.decode(ids) == text


def test_a_rendered_dialogue_round_trips_with_and_without_special_tokens(tokenizer):
    dialogue = format_dialogue("what is 7 plus 5?", "12.")
    assert dialogue == "<|user|> what is 7 plus 5? <|assistant|> 12. <|end|>"
    ids = tokenizer.encode(dialogue)
    assert tokenizer.convert_ids_to_tokens(ids) == [
        USER, "what", "is", "7", "plus", "5", "?", ASSISTANT, "12", ".", END,
    ]
    assert tokenizer.decode(ids) == dialogue
    assert tokenizer.decode(ids, skip_special_tokens=True) == "what is 7 plus 5? 12."


def test_one_token_per_word_and_per_punctuation_mark(tokenizer):
    assert tokenizer.tokenize("first, i do not know.") == ["first", ",", "i", "do", "not", "know", "."]


def test_special_tokens_are_single_ids_even_without_spaces(tokenizer):
    for special in (USER, ASSISTANT, END, PAD, UNK):
        assert len(tokenizer.encode(special)) == 1, special
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode(f"{USER}hello{ASSISTANT}")) == [USER, "hello", ASSISTANT]


def test_pad_is_a_separate_token_from_end(tokenizer):
    assert tokenizer.eos_token == END and tokenizer.pad_token == PAD and tokenizer.unk_token == UNK
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"


def test_unknown_word_becomes_unk(tokenizer):
    ids = tokenizer.encode("what is xylophone?")
    assert ids[2] == tokenizer.unk_token_id
    assert ids[0] != tokenizer.unk_token_id


def test_numbers_and_punctuation_are_always_in_the_vocabulary():
    tokenizer = build_tokenizer(["hello"])
    vocabulary = tokenizer.get_vocab()
    for token in [str(n) for n in range(201)] + PUNCTUATION:
        assert token in vocabulary, token
    assert tokenizer.encode("201") == [tokenizer.unk_token_id]


def test_input_is_lowercased(tokenizer):
    assert tokenizer.encode("What Is 7 PLUS 5?") == tokenizer.encode("what is 7 plus 5?")


def test_vocabulary_does_not_depend_on_word_order():
    assert build_tokenizer(["b a", "c"]).get_vocab() == build_tokenizer(["c", "a", "b"]).get_vocab()


def test_markers_in_texts_do_not_add_fragments_to_the_vocabulary():
    vocabulary = build_tokenizer([format_dialogue("hi", "hello.")]).get_vocab()
    assert "user" not in vocabulary and "|" not in vocabulary and "<" not in vocabulary
    assert "hi" in vocabulary and "hello" in vocabulary


def test_chat_template_renders_the_world_format_exactly(tokenizer):
    question, answer = "what is 7 plus 5?", "12."
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|user|> what is 7 plus 5? <|assistant|>" == format_prompt(question)
    dialogue = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], tokenize=False
    )
    assert dialogue == "<|user|> what is 7 plus 5? <|assistant|> 12. <|end|>" == format_dialogue(question, answer)


def test_chat_template_rejects_unknown_roles(tokenizer):
    with pytest.raises(Exception, match="only user and assistant turns"):
        tokenizer.apply_chat_template([{"role": "system", "content": "be nice."}], tokenize=False)


def test_saved_tokenizer_loads_with_autotokenizer_and_encodes_the_same(tokenizer, tmp_path):
    save_tokenizer(tokenizer, tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in WORLD_SENTENCES + [format_dialogue("what is 7 plus 5?", "i like xylophones.")]:
        assert reloaded.encode(text) == tokenizer.encode(text)
        assert reloaded.decode(reloaded.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
    )
    assert reloaded.padding_side == "left"
    assert reloaded.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    ) == format_prompt("hi")


def test_saved_config_is_readable_by_transformers_4(tokenizer, tmp_path):
    # transformers 4.4x (Colab) does not know transformers 5's class name or .jinja file.
    save_tokenizer(tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == tokenizer.chat_template
    assert not (tmp_path / "chat_template.jinja").exists()
    # 4.x tokenizers return token_type_ids unless told otherwise, and GPT-2 would add an embedding for them.
    assert list(AutoTokenizer.from_pretrained(tmp_path)(["hi"]).keys()) == ["input_ids", "attention_mask"]
