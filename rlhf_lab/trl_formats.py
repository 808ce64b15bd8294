"""Our data in TRL's *conversational* formats, which TRL tokenizes exactly as our trainers do.

TRL reads rows whose keys say what they are. In its *standard* flavour the values are plain strings
and TRL concatenates them, without our `<|user|>`/`<|assistant|>`/`<|end|>` markers. In the
*conversational* flavour they are chat messages, and TRL renders them with the tokenizer's chat
template, which writes our layout, `<|user|> question <|assistant|> answer <|end|>`:

    sft_conversations(rows)           {"messages": [user, assistant]}        SFTTrainer, assistant_only_loss=True
    preference_conversations(records) {"prompt": [user], "chosen": [assistant],
                                       "rejected": [assistant], "weight": w}  RewardTrainer, DPOTrainer
    prompt_conversations(rows)        {"prompt": [user]}                      RLOOTrainer, GRPOTrainer

`Dataset.from_list(rows)` makes a `datasets.Dataset` of them; tests/test_trl_formats.py checks, token
for token, that TRL's tokenization of these rows equals ours (for SFT, TRL's labels equal our loss
mask: the chat template marks the assistant's tokens with `{% generation %}`).

Weights. Preference rows keep each pair's weight (a learner's own label counts `learner_weight`
times, as in `reward.train_reward_model`), but TRL 1.16 cannot use it: neither `DPOTrainer` nor
`RewardTrainer` has per-example weights (`RewardTrainer`'s optional `margin` column is a margin
inside the loss, -log σ(r_chosen - r_rejected - margin), not a weight; `DPOConfig.use_weighting` is
WPO's weighting by the policy's own probabilities). Both drop the `weight` column with the other
columns they do not know, so each pair counts once; to count a pair w times (w a whole number),
repeat its row w times.
"""

from __future__ import annotations

from collections.abc import Iterable

from rlhf_lab.preferences import PreferenceRecord
from rlhf_lab.reward import RewardConfig, pairs_from_records


def user_turn(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def assistant_turn(answer: str) -> list[dict]:
    return [{"role": "assistant", "content": answer}]


def _text(row: dict, field: str, what: str, number: int) -> str:
    """row[field], which must be a string; the error names the function, the row and the field."""
    if not isinstance(row, dict) or field not in row:
        raise ValueError(f"{what}: row {number} has no field {field!r} (got {row!r})")
    if not isinstance(row[field], str):
        raise TypeError(f"{what}: row {number}, field {field!r}: expected a string, got {row[field]!r}")
    return row[field]


def sft_conversations(rows: Iterable[dict]) -> list[dict]:
    """Prompt/completion demonstrations (data/world/sft.jsonl) as TRL conversational language-modelling rows.

    Train on them with `SFTConfig(assistant_only_loss=True)`: the loss then counts the answer and its
    end token only, like our SFT's prompt mask (without it TRL would also train on the question).
    """
    return [{"messages": user_turn(_text(row, "prompt", "sft_conversations", number))
             + assistant_turn(_text(row, "completion", "sft_conversations", number))}
            for number, row in enumerate(rows, 1)]


def prompt_conversations(rows: Iterable[dict]) -> list[dict]:
    """Prompts (data/world/prompts.jsonl) as TRL conversational prompt-only rows, for RLOO and GRPO."""
    return [{"prompt": user_turn(_text(row, "prompt", "prompt_conversations", number))}
            for number, row in enumerate(rows, 1)]


def pair_conversations(pairs: Iterable[dict]) -> list[dict]:
    """Preference pairs (`reward.pairs_from_records`, `split_by_prompt`) as TRL conversational preference rows.

    A pair marked as a tie, or whose two answers are the same text, says nothing about which answer
    is better and is left out. `weight` defaults to 1 (see the module docstring: TRL ignores it).
    """
    rows = []
    for number, pair in enumerate(pairs, 1):
        prompt, chosen, rejected = (_text(pair, field, "pair_conversations", number)
                                    for field in ("prompt", "chosen", "rejected"))
        if pair.get("tie") or chosen == rejected:
            continue
        rows.append({"prompt": user_turn(prompt), "chosen": assistant_turn(chosen),
                     "rejected": assistant_turn(rejected), "weight": float(pair.get("weight", 1.0))})
    return rows


def preference_conversations(records: Iterable[PreferenceRecord],
                             learner_weight: float = RewardConfig.learner_weight) -> list[dict]:
    """Preference records (a `PreferenceStore`'s) as TRL conversational preference rows: the very pairs
    our reward model trains on (`reward.pairs_from_records`: ties and identical answers left out, a
    learner's label weighted `learner_weight`), in the order of the records."""
    return pair_conversations(pairs_from_records(records, learner_weight))
