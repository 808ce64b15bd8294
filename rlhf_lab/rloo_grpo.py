"""Critic-free advantages: sample k answers per prompt and compare each with its siblings.

PPO learns a value function to know whether a reward was good *for this prompt*. RLOO and GRPO
skip the critic: they sample a group of k answers to the same prompt and use the group itself as
the baseline. Rewards are one score per whole answer, shape (B prompts, k answers).
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlhf_lab.checks import check_finite
from rlhf_lab.config import SAMPLING_TEMPERATURE, for_scale, fused
from rlhf_lab.judge import judge
from rlhf_lab.kl import kl_k1, kl_k3
from rlhf_lab.masked import masked_mean, masked_sum
from rlhf_lab.policy import generate, response_logprobs
from rlhf_lab.ppo import entropy_from_logits, logits_and_logprobs, minibatch_columns, ppo_policy_loss, run_epochs


def _check_groups(function_name: str, rewards: Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(
            f"{function_name}: `rewards` must have shape (B prompts, k answers), got {tuple(rewards.shape)}"
        )


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out: each answer's baseline is the mean of the *other* k - 1 answers.

        A_i = R_i - 1/(k-1) sum_{j != i} R_j

    Leaving R_i out keeps the baseline independent of answer i, so the gradient stays unbiased.
    """
    _check_groups("rloo_advantages", rewards)
    k = rewards.shape[1]
    if k < 2:
        raise ValueError(f"rloo_advantages: needs k >= 2 answers per prompt to leave one out, got k={k}")
    leave_one_out_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - leave_one_out_mean


def grpo_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """Group Relative Policy Optimisation: standardise the rewards within each group.

        A_i = (R_i - mean(R)) / (std(R) + ε)

    A group whose answers all got the same reward carries no signal: its advantages are exactly 0
    (never NaN, also for k = 1).
    """
    _check_groups("grpo_advantages", rewards)
    if rewards.shape[1] == 1:
        # A single answer has nothing to be compared with (and its sample std is undefined).
        return torch.zeros_like(rewards)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    advantages = (rewards - mean) / (std + eps)
    # Rounding makes R_i - mean a tiny non-zero number in a flat group, which ε would not
    # fully silence; test the spread itself to return exact zeros.
    flat_group = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    return torch.where(flat_group, 0.0, advantages)


# =====================================================================================
# One trainer for both: k answers per prompt, group advantages, a clipped update.
# =====================================================================================

METHODS = {"rloo": rloo_advantages, "grpo": grpo_advantages}


def kl_in_reward(scores: Tensor, kl: Tensor, beta: float) -> Tensor:
    """RLOO (Ahmadian et al. 2024): R_i = score_i - β sum_t k1_t, before the group baseline --
    like PPO's per-token penalty, summed over the answer."""
    return scores - beta * kl


def kl_in_loss(policy_loss: Tensor, kl_estimate: Tensor, beta: float) -> Tensor:
    """GRPO (Shao et al. 2024): R_i = score_i, and β · mean_t k3_t of π against π_ref is added to the
    loss. k3 is >= 0 on every sampled token, and its gradient pulls π back towards π_ref."""
    return policy_loss + beta * kl_estimate


# Where each method's paper puts the KL to the reference.
KL_PLACEMENT = {"rloo": "reward", "grpo": "loss"}


@dataclass
class GroupConfig:
    method: str = "rloo"  # "rloo" or "grpo": which group baseline turns scores into advantages
    kl_in: str | None = None  # "reward" or "loss" (see KL_PLACEMENT); None: the method's own choice
    iterations: int = 25
    prompts_per_iteration: int = 16
    group_size: int = 4  # k answers per prompt: 16 x 4 = 64 answers per rollout, PPO's batch size
    minibatch_size: int = 16  # answers per gradient step
    # Passes over each rollout, with PPO's clipped ratio keeping the later passes honest. RLOO as
    # published is plain REINFORCE (one unclipped step per batch); the clipped multi-epoch update is
    # our choice (and TRL's), so both methods share PPO's update.
    epochs: int = 2
    lr: float = 5e-5
    temperature: float = SAMPLING_TEMPERATURE  # sampling AND every log-prob recomputation (rule 2)
    max_new_tokens: int = 64
    beta: float = 0.05  # KL coefficient
    clip_eps: float = 0.2
    grad_clip: float = 1.0
    missing_end_penalty: float = -1.0  # added to the score of answers cut off at max_new_tokens
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"GroupConfig: method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.kl_in not in (None, "reward", "loss"):
            raise ValueError(f"GroupConfig: kl_in must be 'reward' or 'loss', got {self.kl_in!r}")
        if self.group_size < 2:
            raise ValueError(f"GroupConfig: group_size must be >= 2 (a group baseline needs siblings), "
                             f"got {self.group_size}")

    @property
    def kl_placement(self) -> str:
        """Where the KL goes: `kl_in` if set, else the method's own choice (KL_PLACEMENT)."""
        return self.kl_in or KL_PLACEMENT[self.method]


GROUP_PRESETS = {
    "ci": dict(iterations=10, prompts_per_iteration=8, epochs=1),
    "laptop": dict(),
    "gpu": dict(iterations=60, prompts_per_iteration=32, minibatch_size=32),
}


def group_config(method: str = "rloo", scale: str | None = None, **overrides) -> GroupConfig:
    return for_scale(GroupConfig, GROUP_PRESETS, scale, method=method, **overrides)


@dataclass
class GroupBatch:
    """k answers to each prompt (a group is k neighbouring rows) and their advantages."""

    prompts: list[str]  # one per answer (each prompt repeated k times)
    texts: list[str]
    input_ids: Tensor
    attention_mask: Tensor
    context_length: int
    mask: Tensor  # (B, T) 1 on real response tokens
    finished: Tensor
    logprobs: Tensor  # log π_old(y_t)
    ref_logprobs: Tensor
    scores: Tensor  # (B,) the reward model's scores
    kl: Tensor  # (B,) summed k1 per answer, in nats
    answer_advantages: Tensor  # (B,) one advantage per answer
    advantages: Tensor  # (B, T) the answer's advantage on each of its tokens
    flat_groups: float  # share of groups whose answers all got the same reward (no signal)
    generation_seconds: float


class GroupTrainer:
    """RLOO or GRPO: PPO's loop without the critic. `train()` is the whole algorithm.

    Each iteration samples `group_size` answers to each of `prompts_per_iteration` prompts, scores
    them with the reward model, turns each group's scores into advantages (leave-one-out mean or
    standardised), gives every token of an answer its answer's advantage, and takes a few epochs
    of PPO's clipped surrogate steps (`ppo.ppo_policy_loss`: per token, averaged over the real
    tokens of the minibatch) -- plus, for GRPO, the KL term in the loss.
    """

    def __init__(self, policy, reference, reward_model, tokenizer, prompts: list[str], cfg: GroupConfig):
        self.cfg, self.tokenizer, self.prompts = cfg, tokenizer, prompts
        self.policy = policy
        self.device = next(policy.parameters()).device
        # Frozen reference and reward model: eval mode, no gradients (rule 4).
        self.reference = reference.eval().requires_grad_(False)
        self.reward_model = reward_model.eval().requires_grad_(False)
        self.optimizer = fused(torch.optim.Adam, policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.advantage_function = METHODS[cfg.method]
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict] = []

    def train(self, callback: Callable[[pd.DataFrame], None] | None = None, progress: bool = True) -> pd.DataFrame:
        """The loop: rollout, group advantages, update. `callback(history)` after every iteration."""
        cfg = self.cfg
        bar = tqdm(range(len(self.history), cfg.iterations), desc=cfg.method.upper(), disable=not progress)
        for iteration in bar:
            pick = torch.randint(len(self.prompts), (cfg.prompts_per_iteration,), generator=self.generator).tolist()
            batch = self.rollout([self.prompts[i] for i in pick])
            started = time.perf_counter()
            update_stats = self.update(batch)
            row = {"iteration": iteration, **self.rollout_stats(batch), **update_stats,
                   "generation_seconds": batch.generation_seconds, "update_seconds": time.perf_counter() - started}
            check_finite(f"{cfg.method.upper()}, iteration {iteration}", row)
            self.history.append(row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", true=f"{row['true_score']:.2f}", kl=f"{row['kl']:.2f}")
            if callback is not None:
                callback(self.history_frame())
        return self.history_frame()

    @torch.no_grad()
    def rollout(self, prompts: list[str]) -> GroupBatch:
        """k answers per prompt, their scores, KL and group advantages, from the pre-update policy."""
        cfg = self.cfg
        started = time.perf_counter()
        repeated = [q for q in prompts for _ in range(cfg.group_size)]  # a group = k neighbouring rows
        rollout = generate(self.policy, self.tokenizer, repeated, cfg.max_new_tokens, cfg.temperature, self.generator)
        generation_seconds = time.perf_counter() - started
        input_ids, attention_mask = rollout.input_ids.to(self.device), rollout.attention_mask.to(self.device)
        ctx, mask = rollout.context_length, rollout.response_mask.to(self.device)
        logprobs = response_logprobs(self.policy, input_ids, attention_mask, ctx, cfg.temperature)
        ref_logprobs = response_logprobs(self.reference, input_ids, attention_mask, ctx, cfg.temperature)
        kl = masked_sum(kl_k1(logprobs, ref_logprobs), mask, dim=1)  # per answer, in nats
        scores = self.reward_model(input_ids, attention_mask).float()
        check_finite(f"{cfg.method.upper()} rollout, iteration {len(self.history)}",
                     {"the reward model's score": scores, "the KL": kl})
        finished = rollout.finished.to(self.device)
        rewards = torch.where(finished, scores, scores + cfg.missing_end_penalty)
        if cfg.kl_placement == "reward":
            rewards = kl_in_reward(rewards, kl, cfg.beta)
        group_rewards = rewards.view(len(prompts), cfg.group_size)
        advantages = self.advantage_function(group_rewards).reshape(-1)
        flat_groups = (group_rewards.amax(dim=1) == group_rewards.amin(dim=1)).float().mean().item()
        # One advantage per answer, shared by all its tokens (0 on pads).
        token_advantages = torch.where(mask.bool(), advantages[:, None], 0.0)
        return GroupBatch(repeated, rollout.texts, input_ids, attention_mask, ctx, mask, finished, logprobs,
                          ref_logprobs, scores, kl, advantages, token_advantages, flat_groups, generation_seconds)

    def update(self, batch: GroupBatch) -> dict[str, float]:
        """`epochs` passes of clipped policy steps (plus the KL term for GRPO) over minibatches."""
        self.policy.train()
        stats = run_epochs(len(batch.prompts), self.cfg.minibatch_size, self.cfg.epochs, self.generator,
                           lambda rows: self._step(batch, rows))
        self.policy.eval()
        return stats

    def _step(self, batch: GroupBatch, rows: list[int]) -> dict[str, float]:
        cfg = self.cfg
        inputs, answer, ctx = minibatch_columns(batch.attention_mask[rows], batch.mask[rows], batch.context_length)
        mask = batch.mask[rows, answer]
        logits, logprobs = logits_and_logprobs(self.policy, batch.input_ids[rows, inputs],
                                               batch.attention_mask[rows, inputs], ctx, cfg.temperature)
        policy_loss, policy_stats = ppo_policy_loss(logprobs, batch.logprobs[rows, answer],
                                                    batch.advantages[rows, answer], mask, cfg.clip_eps)
        kl_estimate = masked_mean(kl_k3(logprobs, batch.ref_logprobs[rows, answer]), mask)  # logged either way
        loss = kl_in_loss(policy_loss, kl_estimate, cfg.beta) if cfg.kl_placement == "loss" else policy_loss
        check_finite(f"{cfg.method.upper()} update, iteration {len(self.history)}", {"the loss": loss})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return {"policy_loss": policy_loss.item(), "kl_loss": kl_estimate.item(),
                "entropy": entropy_from_logits(logits.detach(), mask).item(), **policy_stats}

    def rollout_stats(self, batch: GroupBatch) -> dict[str, float]:
        """What the history logs about a rollout: proxy and true score, KL (k1 and k3), spreads."""
        true_scores = [judge(q, t, f).total for q, t, f in zip(batch.prompts, batch.texts, batch.finished.tolist())]
        return {"reward": batch.scores.mean().item(),
                "true_score": sum(true_scores) / len(true_scores),  # never used for training
                "kl": batch.kl.mean().item(),
                "kl_k3": masked_sum(kl_k3(batch.logprobs, batch.ref_logprobs), batch.mask, dim=1).mean().item(),
                "beta": self.cfg.beta, "response_length": batch.mask.sum(dim=1).mean().item(),
                "finished_rate": batch.finished.float().mean().item(),
                "advantage_std": batch.answer_advantages.std().item(), "flat_groups": batch.flat_groups}

    def history_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.history)
        frame.attrs["config"] = asdict(self.cfg)
        return frame
