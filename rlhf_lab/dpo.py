"""Direct Preference Optimisation: fit the policy to preferences without a reward model or PPO.

DPO notices that the KL-regularised RLHF objective has a closed-form optimum, in which the reward
is β (log π(y) - log π_ref(y)) up to a per-prompt constant. Plugging that implicit reward into the
Bradley-Terry loss gives a plain classification loss on preference pairs (Rafailov et al., 2023).
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from rlhf_lab.checkpoints import read_json
from rlhf_lab.checks import check_finite
from rlhf_lab.config import SAMPLING_TEMPERATURE, artifacts_dir, data_dir, find_checkpoint, for_scale, fused
from rlhf_lab.evaluate import EvalConfig, frontier_point, measure_policy
from rlhf_lab.masked import check_same_shape, masked_sum, weighted_mean
from rlhf_lab.policy import in_row_order, left_pad, length_chunks, response_logprobs
from rlhf_lab.preferences import read_preference_file
from rlhf_lab.reward import item_batches, pairs_from_records, split_by_prompt
from rlhf_lab.tokenizer import END, format_prompt


def sequence_logprob(token_logprobs: Tensor, mask: Tensor) -> Tensor:
    """log π(y) = sum_t m_t log π(y_t): the response's log-prob, summed over its real tokens.

    `token_logprobs` and `mask` are (B, T) over response tokens; the result is (B,).
    Prompt tokens and pads must be 0 in the mask: DPO scores only the response.
    """
    return masked_sum(token_logprobs, mask, dim=-1)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO loss over a batch of preference pairs (sequence log-probs, shape (B,)).

        h = β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))]
        L = mean -log σ(h)
        L = sum_i w_i (-log σ(h_i)) / sum_i w_i        (with per-pair weights, as the reward model's)

    Returns:
        loss: a scalar to minimise.
        chosen_rewards, rejected_rewards: the implicit rewards β (log π(y) - log π_ref(y)) of
            each answer, detached (for logging: their difference is the reward margin).
    """
    check_same_shape(
        "dpo_loss",
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    preference_logits = beta * (chosen_logratios - rejected_logratios)
    loss = weighted_mean(-F.logsigmoid(preference_logits), weights, "dpo_loss")
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return loss, chosen_rewards, rejected_rewards


# =====================================================================================
# The trainer: preference pairs in, a policy out -- no reward model, no sampling.
# =====================================================================================


@dataclass
class DPOConfig:
    # Strength of the implicit KL leash: small β lets π move further from π_ref. The DPO paper
    # used 0.1 for its models; on our nano policy 0.1 already drifts far (see lesson 07).
    beta: float = 0.5
    epochs: int = 1  # one pass, like the reward model: more over-fits the comparisons
    items_per_batch: int = 6  # labelling items per step (a K=4 item gives 6 pairs, kept together)
    lr: float = 1e-4
    grad_clip: float = 1.0
    heldout_fraction: float = 0.1  # prompts held out to measure the implicit reward's accuracy
    heldout_pairs: int = 512  # at most this many held-out pairs per check (enough for a ±2% accuracy)
    eval_every: int = 50  # steps between held-out accuracy and sampled KL / true score
    eval_prompts: int = 64  # training prompts sampled for the KL / true-score check
    temperature: float = SAMPLING_TEMPERATURE  # the *evaluation* samples only; DPO's own log-probs use T = 1
    max_new_tokens: int = 64
    max_steps: int = 0  # stop early after this many steps (0: all epochs)
    # A step's answers go through the model in passes of answers of similar length, so that short ones
    # are not padded to the longest (`policy.length_chunks`, which weighs the padding saved against a
    # pass's fixed cost, this many token positions): the same log-probs, faster on a CPU. 0: one pass.
    pass_overhead: int = 128
    learner_weight: float = 2.0  # a learner's own label counts twice, as in the reward model's loss
    seed: int = 0


DPO_PRESETS = {
    "ci": dict(max_steps=30, eval_every=10, eval_prompts=32, heldout_pairs=128),
    "laptop": dict(),
    "gpu": dict(items_per_batch=12, eval_prompts=128,
                pass_overhead=0),  # one pass per step: at our sizes a GPU's cost is per pass, not per position
}


def dpo_config(scale: str | None = None, **overrides) -> DPOConfig:
    return for_scale(DPOConfig, DPO_PRESETS, scale, **overrides)


def reward_model_preferences(reward_dir: str | Path | None = None) -> Path:
    """The preference file the reward model learned from, so DPO learns from the very same labels.

    In order: the `prefs` file the reward stage recorded in the reward model's metrics.json; for a
    reward model that lessons 03-04 trained (it lives under artifacts/), their store
    `artifacts/preferences/preferences.jsonl`, the learner's own labels included; else the shipped
    `data/world/preferences.jsonl` that the shipped reward model learned from.
    """
    try:
        reward_dir = Path(reward_dir or find_checkpoint("reward"))
    except FileNotFoundError:  # no reward model yet: DPO does not need one
        return data_dir() / "world" / "preferences.jsonl"
    metrics_file = reward_dir / "metrics.json"
    metrics = read_json(metrics_file) if metrics_file.is_file() else {}  # a corrupt file is named in the error
    recorded = metrics.get("prefs") if isinstance(metrics, dict) else None
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    lesson_store = artifacts_dir() / "preferences" / "preferences.jsonl"
    if reward_dir.resolve().is_relative_to(artifacts_dir().resolve()) and lesson_store.is_file():
        return lesson_store
    return data_dir() / "world" / "preferences.jsonl"


def preference_pairs(path: str | Path, learner_weight: float = 2.0) -> list[dict]:
    """Every usable pair of a preference file: the same pairs the reward model trains on.

    Ties and identical answers are dropped; the learner's own labels are kept (with their
    `weight` and `source`), so DPO learns from exactly what the reward model learned from.
    """
    return pairs_from_records(read_preference_file(path).records, learner_weight)


def response_token_ids(tokenizer, prompts: list[str], answers: list[str]) -> dict[str, dict[str, list[int]]]:
    """Token ids of every distinct prompt (`<|user|> q <|assistant|>`) and answer (`answer <|end|>`).

    A training run tokenizes its pairs once, up front (`pairs_token_ids`), and its batches only pad these lists.
    The tokenizer splits on spaces, so an answer alone gives the same tokens as inside its dialogue.
    """
    prompts, answers = list(dict.fromkeys(prompts)), list(dict.fromkeys(answers))
    prompt_rows = tokenizer([format_prompt(prompt) for prompt in prompts], add_special_tokens=False)["input_ids"]
    answer_rows = tokenizer([f"{answer} {END}" for answer in answers], add_special_tokens=False)["input_ids"]
    return {"prompts": dict(zip(prompts, prompt_rows)), "answers": dict(zip(answers, answer_rows))}


def pairs_token_ids(tokenizer, pairs: list[dict]) -> dict[str, dict[str, list[int]]]:
    """`response_token_ids` of the prompts and of the chosen and rejected answers of the pairs."""
    return response_token_ids(tokenizer, [p["prompt"] for p in pairs],
                              [answer for p in pairs for answer in (p["chosen"], p["rejected"])])


def encode_responses(tokenizer, prompts: list[str], answers: list[str], device, finished: list[bool] | None = None,
                     token_ids: dict | None = None) -> tuple[Tensor, Tensor, int, Tensor]:
    """Prompts and given answers laid out exactly like a rollout of `policy.generate`.

    Prompts are left-padded (`<|user|> q <|assistant|>`), each answer follows with its end token
    (unless `finished` says it never ended: an answer cut off at the length limit has none),
    then right padding. Returns `(input_ids, attention_mask, context_length, response_mask)`:
    the answer starts at column `context_length`, and `response_mask` (B, T) is 1 on the answer's
    tokens and its end token. So `response_logprobs` reads them with the usual `[ctx-1:-1]` slice.
    `token_ids` (from `response_token_ids`, whose answers all ended) saves tokenizing them again.
    """
    finished = finished if finished is not None else [True] * len(answers)
    ended = [answer for answer, done in zip(answers, finished) if done]
    token_ids = token_ids or response_token_ids(tokenizer, prompts, ended)
    cut_short = [answer for answer, done in zip(answers, finished) if not done]  # no end token to append
    cut_rows = dict(zip(cut_short, tokenizer(cut_short, add_special_tokens=False)["input_ids"])) if cut_short else {}
    answer_rows = [token_ids["answers"][answer] if done else cut_rows[answer]
                   for answer, done in zip(answers, finished)]
    prompt_ids, prompt_mask = left_pad([token_ids["prompts"][prompt] for prompt in prompts], tokenizer.pad_token_id)
    width = max(len(row) for row in answer_rows)
    pad = tokenizer.pad_token_id
    response_ids = torch.tensor([row + [pad] * (width - len(row)) for row in answer_rows])
    response_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in answer_rows])
    input_ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1).to(device)
    return input_ids, attention_mask, prompt_ids.shape[1], response_mask.float().to(device)


def answer_logprobs(model, tokenizer, dialogues: list[tuple[str, str]], token_ids: dict,
                    pass_overhead: int = 0) -> Tensor:
    """log π(answer | prompt) of each `(prompt, answer)`, `(N,)`, summed over the answer's tokens.

    In passes of dialogues of similar length (`policy.length_chunks(lengths, pass_overhead)`; 0: one pass).
    `token_ids` comes from `response_token_ids`.
    """
    device = next(model.parameters()).device
    chunks = length_chunks([len(token_ids["prompts"][prompt]) + len(token_ids["answers"][answer])
                            for prompt, answer in dialogues], pass_overhead)
    logps = []
    for chunk in chunks:
        input_ids, attention_mask, ctx, response_mask = encode_responses(
            tokenizer, [dialogues[i][0] for i in chunk], [dialogues[i][1] for i in chunk], device, token_ids=token_ids)
        token_logprobs = response_logprobs(model, input_ids, attention_mask, ctx, temperature=1.0)
        logps.append(sequence_logprob(token_logprobs, response_mask))
    return in_row_order(logps, chunks)


def pair_logprobs(model, tokenizer, pairs: list[dict], token_ids: dict | None = None,
                  pass_overhead: int = 0) -> tuple[Tensor, Tensor]:
    """Sequence log-probs log π(y_w), log π(y_l) of each pair's answers, shape (B,) each.

    Summed over the response tokens (end token included), at temperature 1: DPO's π is the
    model's own distribution. Each distinct (prompt, answer) goes through the model once: the pairs
    of one labelling item share their answers (K answers make C(K, 2) pairs), so for K = 4 that is a
    third of the rows, with the same numbers. `token_ids` (from `pairs_token_ids`) saves tokenizing
    them again; `pass_overhead`: see `answer_logprobs`.
    """
    dialogues = [(p["prompt"], p["chosen"]) for p in pairs] + [(p["prompt"], p["rejected"]) for p in pairs]
    row_of = {dialogue: row for row, dialogue in enumerate(dict.fromkeys(dialogues))}
    distinct_logps = answer_logprobs(model, tokenizer, list(row_of), token_ids or pairs_token_ids(tokenizer, pairs),
                                     pass_overhead)
    logps = distinct_logps[torch.tensor([row_of[dialogue] for dialogue in dialogues], device=distinct_logps.device)]
    return logps[: len(pairs)], logps[len(pairs):]


@torch.no_grad()
def heldout_preference_stats(policy, reference, tokenizer, pairs: list[dict], beta: float,
                             batch_size: int = 128, pass_overhead: int = 0) -> dict[str, float]:
    """DPO loss and implicit-reward accuracy (chosen reward > rejected reward) on held-out pairs."""
    losses, correct = [], []
    token_ids = pairs_token_ids(tokenizer, pairs)
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i:i + batch_size]
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            *pair_logprobs(policy, tokenizer, batch, token_ids, pass_overhead),
            *pair_logprobs(reference, tokenizer, batch, token_ids, pass_overhead), beta)
        losses.append(loss.item() * len(batch))
        correct.append((chosen_rewards > rejected_rewards).float().sum().item())
    return {"heldout_loss": sum(losses) / len(pairs), "heldout_accuracy": sum(correct) / len(pairs)}


def _measure(policy, reference, tokenizer, heldout_pairs: list[dict], eval_questions: list[str],
             cfg: DPOConfig) -> dict[str, float]:
    """Held-out loss and accuracy of the implicit reward, and -- from answers sampled on
    `eval_questions` -- the simulated human's score and the KL to the reference (the frontier)."""
    stats = heldout_preference_stats(policy, reference, tokenizer, heldout_pairs[: cfg.heldout_pairs], cfg.beta,
                                     pass_overhead=cfg.pass_overhead)
    sampling = EvalConfig(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    point = frontier_point(measure_policy(policy, tokenizer, eval_questions, sampling, reference=reference,
                                          progress=False))  # under train_dpo's bar
    return {**stats, **{name: point[name] for name in ("true_score", "kl", "kl_k3", "words")}}


def _dpo_step(policy, optimizer, batch: list[dict], reference_logps: tuple[Tensor, Tensor], tokenizer,
              cfg: DPOConfig, step: int, token_ids: dict | None = None) -> dict[str, float]:
    """One gradient step of the DPO loss on a batch of pairs; returns what the history logs."""
    policy.train()
    policy_chosen_logps, policy_rejected_logps = pair_logprobs(policy, tokenizer, batch, token_ids, cfg.pass_overhead)
    weights = torch.tensor([p.get("weight", 1.0) for p in batch], device=policy_chosen_logps.device)
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen_logps, policy_rejected_logps, *reference_logps,
                                                      cfg.beta, weights)
    check_finite(f"DPO, step {step}", {"the policy's chosen log-probs": policy_chosen_logps,
                                       "the policy's rejected log-probs": policy_rejected_logps,
                                       "the reference's chosen log-probs": reference_logps[0],
                                       "the reference's rejected log-probs": reference_logps[1], "the loss": loss},
                 f"lower the lr, {cfg.lr}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
    optimizer.step()
    policy.eval()
    return {"pairs": len(batch), "loss": loss.item(), "chosen_reward": chosen_rewards.mean().item(),
            "rejected_reward": rejected_rewards.mean().item(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean().item(),
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(), "grad_norm": grad_norm.item()}


def train_dpo(policy, reference, tokenizer, pairs: list[dict], cfg: DPOConfig, progress: bool = True,
              callback: Callable[[pd.DataFrame], None] | None = None,
              eval_questions: list[str] | None = None) -> pd.DataFrame:
    """Fit the policy to preference pairs with the DPO loss against a frozen reference.

    Pairs are split by prompt into training and held-out ones; batches hold whole labelling
    items (as for the reward model). Every `eval_every` steps the history also gets the held-out
    loss and accuracy of the implicit reward, and -- from answers sampled on `eval_questions`
    (default: the first training prompts) -- the simulated human's score and the KL to the
    reference, so DPO lands on the same frontier as PPO. Returns the per-step history.
    """
    if not pairs:
        raise ValueError("train_dpo: no preference pairs to train on")
    reference = reference.eval().requires_grad_(False)  # π_ref is the SFT policy and must not move (rule 4)
    train_pairs, heldout_pairs = split_by_prompt(pairs, cfg.heldout_fraction, cfg.seed)
    eval_questions = eval_questions or list(dict.fromkeys(p["prompt"] for p in train_pairs))[: cfg.eval_prompts]
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = fused(torch.optim.Adam, policy.parameters(), lr=cfg.lr)
    batches = [batch for _ in range(cfg.epochs) for batch in item_batches(train_pairs, cfg.items_per_batch, generator)]
    batches = batches[: cfg.max_steps] if cfg.max_steps else batches
    token_ids = pairs_token_ids(tokenizer, train_pairs)  # tokenized once for the run
    # π_ref never changes, so its log-probs of every batch are computed once, up front (TRL's
    # `precompute_ref_log_probs`), with the very same batches, so that at step 0 π and π_ref
    # give bit-identical numbers. Each step then runs only the policy.
    with torch.no_grad():
        reference_logps = [pair_logprobs(reference, tokenizer, batch, token_ids, cfg.pass_overhead)
                           for batch in batches]
    history: list[dict] = []
    started = time.perf_counter()
    bar = tqdm(enumerate(batches), total=len(batches), desc=f"DPO (β={cfg.beta})", disable=not progress)
    for step, batch in bar:
        row = {"step": step, **_dpo_step(policy, optimizer, batch, reference_logps[step], tokenizer, cfg, step,
                                         token_ids),
               "seconds": time.perf_counter() - started}
        if step % cfg.eval_every == 0 or step == len(batches) - 1:
            row.update(_measure(policy, reference, tokenizer, heldout_pairs, eval_questions, cfg))
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['heldout_accuracy']:.2f}",
                            true=f"{row['true_score']:.2f}", kl=f"{row['kl']:.2f}")
        check_finite(f"DPO, step {step}", row)
        history.append(row)
        if callback is not None:
            callback(pd.DataFrame(history))
    frame = pd.DataFrame(history)
    frame.attrs["config"] = asdict(cfg)
    return frame
