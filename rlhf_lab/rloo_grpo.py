"""Critic-free advantages: sample k answers per prompt and compare each with its siblings.

PPO learns a value function to know whether a reward was good *for this prompt*. RLOO and GRPO
skip the critic: they sample a group of k answers to the same prompt and use the group itself as
the baseline. Rewards are one score per whole answer, shape (B prompts, k answers).
"""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlhf_lab import world
from rlhf_lab.config import for_scale
from rlhf_lab.kl import kl_k1, kl_k3
from rlhf_lab.masked import masked_mean
from rlhf_lab.policy import generate, response_logprobs
from rlhf_lab.ppo import entropy_from_logits, minibatch_indices, policy_minibatch, ppo_policy_loss, update_means


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
# Where each method's paper puts the KL to the reference:
#   "reward": R_i = score_i - β sum_t k1_t, before the group baseline (RLOO, Ahmadian et al. 2024,
#             like PPO's per-token penalty summed over the answer);
#   "loss":   R_i = score_i, and β · mean_t k3_t is added to the loss (GRPO, Shao et al. 2024).
KL_PLACEMENT = {"rloo": "reward", "grpo": "loss"}


@dataclass
class GroupConfig:
    method: str = "rloo"  # "rloo" or "grpo": which group baseline turns scores into advantages
    kl_in: str = ""  # "reward" or "loss" (see KL_PLACEMENT); empty: the method's own choice
    iterations: int = 25
    prompts_per_iteration: int = 16
    group_size: int = 4  # k answers per prompt: 16 x 4 = 64 answers per rollout, PPO's batch size
    minibatch_size: int = 16  # answers per gradient step
    epochs: int = 2  # passes over each rollout; the clipped ratio keeps the later passes honest
    lr: float = 5e-5
    temperature: float = 0.7  # sampling AND every log-prob recomputation (PPO.md rule 2)
    max_new_tokens: int = 64
    beta: float = 0.05  # KL coefficient
    clip_eps: float = 0.2
    grad_clip: float = 1.0
    missing_end_penalty: float = -1.0  # added to the score of answers cut off at max_new_tokens
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"GroupConfig: method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.kl_in not in ("", "reward", "loss"):
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


class GroupTrainer:
    """RLOO or GRPO: PPO's loop without the critic. `train()` is the whole algorithm.

    Each iteration samples `group_size` answers to each of `prompts_per_iteration` prompts, scores
    them with the reward model, turns each group's scores into advantages (leave-one-out mean or
    standardised), gives every token of an answer its answer's advantage, and takes a few epochs
    of PPO's clipped surrogate steps (`ppo.ppo_policy_loss`: per token, averaged over the real
    tokens of the minibatch) -- plus, for GRPO, β times the mean per-token k3 to the reference.
    """

    def __init__(self, policy, reference, reward_model, tokenizer, prompts: list[str], cfg: GroupConfig):
        self.cfg, self.tokenizer, self.prompts = cfg, tokenizer, prompts
        self.policy = policy
        self.device = next(policy.parameters()).device
        # Frozen reference and reward model: eval mode, no gradients (PPO.md rule 4).
        self.reference = reference.eval().requires_grad_(False)
        self.reward_model = reward_model.eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.advantage_function = METHODS[cfg.method]
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.history: list[dict] = []

    @torch.no_grad()
    def rollout(self, questions: list[str]) -> dict:
        """k answers per question, their scores, KL and group advantages, from the pre-update policy."""
        cfg = self.cfg
        started = time.perf_counter()
        repeated = [q for q in questions for _ in range(cfg.group_size)]  # a group = k neighbouring rows
        rollout = generate(self.policy, self.tokenizer, repeated, cfg.max_new_tokens, cfg.temperature, self.generator)
        generation_seconds = time.perf_counter() - started
        input_ids, attention_mask = rollout.input_ids.to(self.device), rollout.attention_mask.to(self.device)
        ctx, mask = rollout.context_length, rollout.response_mask.to(self.device)
        logprobs = response_logprobs(self.policy, input_ids, attention_mask, ctx, cfg.temperature)
        ref_logprobs = response_logprobs(self.reference, input_ids, attention_mask, ctx, cfg.temperature)
        real = mask.bool()
        kl = torch.where(real, kl_k1(logprobs, ref_logprobs), 0.0).sum(dim=1)  # per answer, in nats
        scores = self.reward_model(input_ids, attention_mask).float()
        finished = rollout.finished.to(self.device)
        penalised_scores = torch.where(finished, scores, scores + cfg.missing_end_penalty)
        # The KL either lowers the reward the group compares (RLOO) or becomes a loss term (GRPO).
        rewards = penalised_scores - cfg.beta * kl if cfg.kl_placement == "reward" else penalised_scores
        group_rewards = rewards.view(len(questions), cfg.group_size)
        advantages = self.advantage_function(group_rewards).reshape(-1)
        # One advantage per answer, shared by all its tokens (0 on pads).
        token_advantages = torch.where(real, advantages[:, None], 0.0)
        flat_groups = (group_rewards.amax(dim=1) == group_rewards.amin(dim=1)).float().mean()
        return dict(rollout=rollout, questions=repeated, input_ids=input_ids, attention_mask=attention_mask,
                    ctx=ctx, mask=mask, logprobs=logprobs, ref_logprobs=ref_logprobs, scores=scores, kl=kl,
                    finished=finished, advantages=token_advantages, answer_advantages=advantages,
                    flat_groups=flat_groups.item(), generation_seconds=generation_seconds)

    def update(self, batch: dict) -> dict[str, float]:
        """`epochs` passes of clipped policy updates (plus the k3 KL term for GRPO) over minibatches."""
        cfg = self.cfg
        self.policy.train()
        size = batch["input_ids"].shape[0]
        stats: dict[str, list[float]] = {}
        first_minibatch = None
        for index in minibatch_indices(size, cfg.minibatch_size, cfg.epochs, self.generator):
            _, _, mask, logits, logprobs = policy_minibatch(self.policy, batch, index, cfg.temperature)
            policy_loss, policy_stats = ppo_policy_loss(logprobs, batch["logprobs"][index],
                                                        batch["advantages"][index], mask, cfg.clip_eps)
            # k3 of π against π_ref on the sampled tokens: >= 0, and its gradient pulls π back.
            kl_loss = masked_mean(kl_k3(logprobs, batch["ref_logprobs"][index]), mask)
            loss = policy_loss + cfg.beta * kl_loss if cfg.kl_placement == "loss" else policy_loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{cfg.method.upper()}: the loss is {loss.item()} at iteration "
                                         f"{len(self.history)}; training stopped")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            self.optimizer.step()
            step_stats = {"policy_loss": policy_loss.item(), "kl_loss": kl_loss.item(),
                          "entropy": entropy_from_logits(logits.detach(), mask).item(), **policy_stats}
            if first_minibatch is None:  # before any step: ratio must be exactly 1 (PPO.md)
                first_minibatch = dict(policy_stats)
            for name, value in step_stats.items():
                stats.setdefault(name, []).append(value)
        self.policy.eval()
        return update_means(stats, first_minibatch)

    def train(self, callback: Callable[[pd.DataFrame], None] | None = None, progress: bool = True) -> pd.DataFrame:
        """The loop: rollout, group advantages, update. `callback(history)` after every iteration."""
        cfg = self.cfg
        bar = tqdm(range(len(self.history), cfg.iterations), desc=cfg.method.upper(), disable=not progress)
        for iteration in bar:
            pick = torch.randint(len(self.prompts), (cfg.prompts_per_iteration,), generator=self.generator).tolist()
            batch = self.rollout([self.prompts[i] for i in pick])
            started = time.perf_counter()
            update_stats = self.update(batch)
            rollout, mask = batch["rollout"], batch["mask"]
            true_scores = [world.judge(q, t, f).total
                           for q, t, f in zip(batch["questions"], rollout.texts, rollout.finished.tolist())]
            row = {
                "iteration": iteration, "reward": batch["scores"].mean().item(),
                "true_score": sum(true_scores) / len(true_scores),  # never used for training
                "kl": batch["kl"].mean().item(),
                "kl_k3": (torch.where(mask.bool(), kl_k3(batch["logprobs"], batch["ref_logprobs"]), 0.0)
                          .sum(dim=1).mean().item()),
                "beta": cfg.beta, "response_length": mask.sum(dim=1).mean().item(),
                "finished_rate": batch["finished"].float().mean().item(),
                "advantage_std": batch["answer_advantages"].std().item(), "flat_groups": batch["flat_groups"],
                **update_stats, "generation_seconds": batch["generation_seconds"],
                "update_seconds": time.perf_counter() - started,
            }
            for name, value in row.items():  # stop at the first NaN, naming it
                if isinstance(value, float) and not math.isfinite(value):
                    raise FloatingPointError(f"{cfg.method.upper()}: statistic {name!r} is {value} at iteration "
                                             f"{iteration}; training stopped")
            self.history.append(row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", true=f"{row['true_score']:.2f}", kl=f"{row['kl']:.2f}")
            if callback is not None:
                callback(self.history_frame())
        return self.history_frame()

    def history_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.history)
        frame.attrs["config"] = asdict(self.cfg)
        return frame
