"""A word-level tokenizer for the toy world, wrapped as a `transformers` tokenizer.

The world's texts are lowercase words separated by single spaces, with the punctuation marks
`. , ? ! :` attached to the word before them ("what is 7 plus 5?"). Real LLMs use sub-word
tokenizers (BPE) because real text has an open vocabulary; our world has about a thousand words,
so one token per word (and one per punctuation mark) keeps sequences short and makes every token
something a learner can read.

A dialogue is rendered as

    <|user|> what is 7 plus 5? <|assistant|> 12. <|end|>

and a prompt for generation stops right after `<|assistant|>`: the model writes the answer and
ends it with `<|end|>`. The padding token `<|pad|>` is deliberately *not* the end token: if it
were, masking out padding would also mask out the end token, and the policy would never be
trained (or rewarded) for stopping (rule 3 of docs/implementation_rules.md).

Wrapping the `tokenizers` object in `PreTrainedTokenizerFast` gives the familiar Hugging Face API
(`tok(texts)`, `tok.decode`, `apply_chat_template`, `save_pretrained` / `AutoTokenizer`), the same
API the last lesson uses with a real pretrained model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
PAD = "<|pad|>"
UNK = "<|unk|>"

# Order fixes the ids: pad=0, unk=1, user=2, assistant=3, end=4.
SPECIAL_TOKENS = [PAD, UNK, USER, ASSISTANT, END]
PUNCTUATION = [".", ",", "?", "!", ":"]
# What the tokenizer returns for the model. transformers 4.x tokenizers also return token_type_ids by
# default, and GPT-2 adds the embedding of token id 0 for each of them: `model(**tokenizer(texts))`
# would silently compute something else than our trainers (who pass ids and mask only).
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
# Numbers are whole words; arithmetic answers stay in this range, so they are always in the
# vocabulary even if the corpus used to build it happens to miss one.
NUMBERS = [str(n) for n in range(201)]

# Jinja chat template (the format `apply_chat_template` renders). Turns are joined by single
# spaces; an assistant turn is closed by the end token; the generation prompt is the open
# assistant marker. Any other role is an error rather than silently dropped text.
# {% generation %} marks what the assistant writes (its answer and the end token, not the marker):
# `apply_chat_template(..., return_assistant_tokens_mask=True)`, and so TRL's SFTTrainer with
# `assistant_only_loss=True`, then trains on exactly the tokens our SFT loss mask keeps.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %} {% endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "<|user|> {{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|> {% generation %}{{ message['content'] }} <|end|>{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('RLHF Lab chats have only user and assistant turns, got role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %} <|assistant|>{% endif -%}"
)


def format_prompt(question: str) -> str:
    """The text a policy continues: `<|user|> {question} <|assistant|>`."""
    return f"{USER} {question} {ASSISTANT}"


def format_dialogue(question: str, answer: str) -> str:
    """A whole training dialogue: `<|user|> {question} <|assistant|> {answer} <|end|>`."""
    return f"{format_prompt(question)} {answer} {END}"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Split on spaces, then cut punctuation off the word it is attached to: "5?" -> "5", "?".
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )


def _vocabulary(words: Iterable[str]) -> dict[str, int]:
    """Token -> id: special tokens, punctuation, numbers 0..200, then the given words sorted."""
    splitter = _pre_tokenizer()
    found: set[str] = set()
    for text in words:
        # Accept whole texts too (even rendered dialogues): drop the markers, split like the
        # tokenizer will, so the vocabulary holds exactly the pieces the tokenizer produces.
        for special in SPECIAL_TOKENS:
            text = text.replace(special, " ")
        found.update(piece for piece, _ in splitter.pre_tokenize_str(text.lower()))
    vocabulary: dict[str, int] = {}
    # Sorting makes the ids independent of the order the words came in.
    for token in SPECIAL_TOKENS + PUNCTUATION + NUMBERS + sorted(found):
        vocabulary.setdefault(token, len(vocabulary))
    return vocabulary


def build_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer from the world's words (or whole texts).

    Every word gets one id; a word not seen here becomes `<|unk|>`. Punctuation marks and the
    numbers "0".."200" are always included.
    """
    backend = Tokenizer(models.WordLevel(vocab=_vocabulary(words), unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = _pre_tokenizer()
    # Special tokens are matched before normalising and splitting ("<|user|>" stays one token)
    # and are dropped by `decode(..., skip_special_tokens=True)`.
    backend.add_special_tokens(SPECIAL_TOKENS)
    # Decoding joins tokens with spaces (the WordPiece decoder without its "cleanup" does just
    # that), then glues each punctuation mark back onto the word before it, so
    # decode(encode(text)) == text for every world text.
    backend.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=False)]
        + [decoders.Replace(f" {mark}", mark) for mark in PUNCTUATION]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=END,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
        # Prompts are padded on the left so that every row's last token is its last real token:
        # generation then appends new tokens right after each prompt.
        padding_side="left",
        # transformers' clean-up would rewrite spaces around punctuation; our decoder already
        # produces the exact world text.
        clean_up_tokenization_spaces=False,
        model_input_names=MODEL_INPUT_NAMES,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike,
                   model_max_length: int | None = None) -> None:
    """`tokenizer.save_pretrained(out_dir)`, written so that transformers 4.4x and 5.x both load it.

    transformers 5 records its own class name (`TokenizersBackend`, unknown to 4.x), names the
    extra special tokens `extra_special_tokens` and puts the chat template in a separate
    `chat_template.jinja` (which 4.4x does not read); 4.x returns `token_type_ids` unless told the
    model's input names. We rewrite `tokenizer_config.json` in the form both versions understand, so
    that a checkpoint saved here also loads, and tokenizes, the same on Colab (`clean_tokenizer_config`).
    `model_max_length`: the model's `n_positions`, so that `truncation=True` cuts where the model ends.
    """
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "tokenizer_config.json"
    config = clean_tokenizer_config(json.loads(config_path.read_text()), model_max_length)
    if isinstance(tokenizer.chat_template, str):
        config["chat_template"] = tokenizer.chat_template
        # One source of truth: transformers 5 would prefer the .jinja file over the config.
        (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# What transformers 5 copies from the loading call into a saved config: they describe where the
# tokenizer was once loaded from, not the tokenizer.
LOADING_KEYS = ("is_local", "local_files_only")


def clean_tokenizer_config(config: dict, model_max_length: int | None = None) -> dict:
    """A saved `tokenizer_config.json`, in the form transformers 4.4x and 5.x both read (see `save_tokenizer`)."""
    config = {key: value for key, value in config.items() if key not in LOADING_KEYS}
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_input_names"] = MODEL_INPUT_NAMES  # 4.x would otherwise add token_type_ids (see above)
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list) and extra:
        config["additional_special_tokens"] = extra
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config
