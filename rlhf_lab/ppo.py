"""PPO for a language model: the formulas (GAE, clipped surrogate, clipped value loss) and the trainer.

All per-token tensors have shape (B, T) over the *response* tokens only: token t of the response,
its log-prob, value and reward. `mask` is 1 on real response tokens (up to and including the end
token) and 0 on pads; pad slots may hold junk and are never read.
"""

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import GPT2Model

from rlhf_lab import world
from rlhf_lab.config import for_scale
from rlhf_lab.kl import AdaptiveKLController, FixedKLController, kl_k3, kl_penalised_rewards
from rlhf_lab.masked import check_same_shape, masked_mean, masked_var, masked_whiten
from rlhf_lab.policy import (forward, generate, position_ids_from_mask, response_logits, response_logprobs, save_policy,
                             token_logprobs)
from rlhf_lab.sft import collate, encode_dialogues, lm_loss

# =====================================================================================
# The PPO formulas: short pure functions, tensors in, tensors out.
# =====================================================================================


@torch.no_grad()  # advantages and returns are fixed targets: gradients must never flow into them
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation over the response tokens of each row.

        δ_t = r_t + γ V_{t+1} - V_t,    with V = 0 after the last real token
        A_t = δ_t + γ λ A_{t+1},        with A = 0 after the last real token
        R_t = A_t + V_t                 (the value targets)

    Nothing bootstraps past the end of a response: the episode ends at its end token. λ = 1 gives
    the Monte-Carlo reward-to-go minus V; λ = 0 gives the one-step TD residual δ_t.

    The returns use the raw advantages; whiten the advantages (`masked_whiten`) only afterwards,
    for the policy loss.

    Returns:
        advantages, returns: (B, T), 0 on pads.
    """
    check_same_shape("gae", rewards=rewards, values=values, mask=mask)
    real = mask.bool()
    advantages = torch.zeros_like(values)
    # V_{t+1} and A_{t+1} of the next *real* token; 0 beyond the end of the response.
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        td_residual = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = td_residual + gamma * lam * next_advantage
        is_real = real[:, t]
        advantages[:, t] = torch.where(is_real, advantage, 0.0)
        # A pad slot is skipped: it neither has an advantage nor passes a value backwards.
        next_value = torch.where(is_real, values[:, t], next_value)
        next_advantage = torch.where(is_real, advantage, next_advantage)
    returns = torch.where(real, advantages + values, 0.0)
    return advantages, returns


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate loss of PPO, averaged over real tokens.

        ρ_t = exp(log π(y_t) - log π_old(y_t))
        L   = mean_t max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε, 1 + ε))

    Taking the max of the two losses is the pessimistic choice: once a token's ratio has moved
    past 1 ± ε in the direction its advantage favours, its gradient is zero.

    Returns:
        loss: a scalar to minimise.
        stats: `clip_fraction` (share of real tokens where the clipped branch is active),
            `approx_kl` (mean k3 estimate of KL(π_old ‖ π)), `ratio_mean`; plain floats.
            On the first minibatch of the first epoch they must be 0, 0 and 1.
    """
    check_same_shape(
        "ppo_policy_loss", logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask
    )
    real = mask.bool()
    # Zero the pad slots first, so junk there cannot reach the loss or its gradient.
    log_ratio = torch.where(real, logprobs - old_logprobs, 0.0)
    advantages = torch.where(real, advantages, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.max(unclipped_loss, clipped_loss), mask)

    with torch.no_grad():
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
        # Samples came from π_old, so k3 with r = π/π_old = ρ estimates KL(π_old ‖ π).
        approx_kl = masked_mean(kl_k3(old_logprobs.detach(), logprobs.detach()), mask)
        ratio_mean = masked_mean(ratio, mask)
    stats = {
        "clip_fraction": clip_fraction.item(),
        "approx_kl": approx_kl.item(),
        "ratio_mean": ratio_mean.item(),
    }
    return loss, stats


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped value loss: the critic may not move more than ε from its rollout values.

        V_clip = clip(V, V_old - ε, V_old + ε)
        L      = ½ mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)

    Inside the band V_clip = V and this is plain squared error; outside it the max keeps the
    larger (pessimistic) error.

    Returns:
        loss: a scalar to minimise.
        stats: `value_clip_fraction`, the share of real tokens where the clipped branch is active.
    """
    check_same_shape("ppo_value_loss", values=values, old_values=old_values, returns=returns, mask=mask)
    real = mask.bool()
    values = torch.where(real, values, 0.0)
    old_values = torch.where(real, old_values, 0.0)
    returns = torch.where(real, returns, 0.0)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        value_clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, {"value_clip_fraction": value_clip_fraction.item()}


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """How much of the returns' variance the critic explains, over real tokens.

        EV = 1 - Var[R - V] / Var[R]

    1 is a perfect critic, 0 is no better than predicting the mean, below 0 is worse than that.
    NaN when the returns have no variance (nothing to explain).
    """
    check_same_shape("explained_variance", values=values, returns=returns, mask=mask)
    returns_variance = masked_var(returns, mask, unbiased=False)
    residual_variance = masked_var(returns - values, mask, unbiased=False)
    if returns_variance == 0:
        return torch.tensor(float("nan"))
    return 1.0 - residual_variance / returns_variance


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy of the next-token distribution over real tokens.

        H_t = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v,    p = softmax(z)

    `logits` is (B, T, V) and must already be divided by the sampling temperature.
    """
    if logits.shape[:-1] != mask.shape:
        raise ValueError(
            f"entropy_from_logits: `logits` has shape {tuple(logits.shape)}, so `mask` needs shape "
            f"{tuple(logits.shape[:-1])}, but it has {tuple(mask.shape)}"
        )
    # Blank the pad rows first so that junk there (even NaN) cannot reach the gradient.
    logits = torch.where(mask.bool().unsqueeze(-1), logits, 0.0)
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
    return masked_mean(entropy, mask)


# =====================================================================================
# The critic: a value for every token, from its own copy of the reward model's backbone.
# =====================================================================================


class ValueModel(nn.Module):
    """V(prefix): the expected final reward from here on, one value per position.

    A separate network (as in lm-human-preferences and TRL), started from the reward model's
    backbone, which already knows what good answers look like; the head starts at zero so the
    first advantages are plain rewards-to-go rather than noise.
    """

    def __init__(self, backbone: GPT2Model):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        return self.head(hidden).squeeze(-1)


def response_values(critic: ValueModel, input_ids: Tensor, attention_mask: Tensor, context_length: int) -> Tensor:
    """Values of the states before each response token: the same `[ctx-1:-1]` slice as the log-probs."""
    return critic(input_ids, attention_mask)[:, context_length - 1:-1]


# =====================================================================================
# The trainer: rollout, score, advantages, a few epochs of clipped updates. One loop.
# =====================================================================================


@dataclass
class PPOConfig:
    iterations: int = 40  # rollout + update rounds
    batch_size: int = 64  # prompts per rollout
    minibatch_size: int = 16
    ppo_epochs: int = 4  # passes over each rollout batch, a fresh permutation each time
    lr: float = 3e-5
    value_lr: float = 1e-4
    temperature: float = 0.7  # sampling AND every log-prob recomputation (PPO.md rule 2)
    max_new_tokens: int = 64
    beta: float = 0.1  # initial KL coefficient β
    adaptive_kl: bool = True
    # The classic constants (target 6 nats, horizon 10000 samples) are for 24-token GPT-2
    # continuations and runs of a million samples. Our answers are ~15 tokens and the useful change
    # (refusing -> answering) costs a fraction of a nat; a laptop run sees ~2,500 samples, so the
    # horizon is shortened too, or β could never move within a run.
    kl_target: float = 0.5
    kl_horizon: int = 1000
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    grad_clip: float = 1.0
    missing_end_penalty: float = -1.0  # added to the score of answers cut off at max_new_tokens
    # PPO-ptx (InstructGPT): also minimise the SFT loss on demonstrations, weighted by ptx_coef, so
    # that what the reward model cannot see (is 3 plus 4 really 7?) is not forgotten -- the
    # "alignment tax". 0 turns it off. InstructGPT mixed in pretraining data; we use the SFT
    # demonstrations, which hold only good answers.
    ptx_coef: float = 8.0  # 4 kept arithmetic at 62.5% against SFT's 65% at laptop scale; 8 kept all of it
    ptx_batch_size: int = 16
    seed: int = 0
    save_every: int = 10  # iterations between checkpoints (the last good one survives a crash)


PPO_PRESETS = {
    "ci": dict(iterations=20, batch_size=32, minibatch_size=16, ppo_epochs=2),
    "laptop": dict(),
    "gpu": dict(iterations=80, batch_size=128, minibatch_size=32),
}


def ppo_config(scale: str | None = None, **overrides) -> PPOConfig:
    return for_scale(PPOConfig, PPO_PRESETS, scale, **overrides)


def minibatch_indices(size: int, minibatch_size: int, epochs: int, generator: torch.Generator):
    """Row indices of every minibatch, epoch after epoch, with a fresh permutation each epoch
    (PPO.md rule 12), so no minibatch repeats the same rows in the same order."""
    for _ in range(epochs):
        order = torch.randperm(size, generator=generator).tolist()
        for start in range(0, size, minibatch_size):
            yield order[start:start + minibatch_size]


def policy_minibatch(policy, batch: dict, index: list[int], temperature: float):
    """A minibatch's rows of the rollout, and the policy's logits and log-probs of its response
    tokens *now* (the rollout's `logprobs` are the old ones): `(ids, attention, mask, logits, logprobs)`."""
    ids, attention, mask = batch["input_ids"][index], batch["attention_mask"][index], batch["mask"][index]
    logits = response_logits(policy, ids, attention, batch["ctx"], temperature).float()
    return ids, attention, mask, logits, token_logprobs(logits, ids[:, batch["ctx"]:])


def update_means(stats: dict[str, list[float]], first_minibatch: dict[str, float]) -> dict[str, float]:
    """Each statistic's mean over the update's minibatches, plus the first minibatch's approx KL
    and clip fraction (before any step they must be exactly 0: PPO.md)."""
    means = {name: sum(values) / len(values) for name, values in stats.items()}
    means["first_minibatch_approx_kl"] = first_minibatch["approx_kl"]
    means["first_minibatch_clip_fraction"] = first_minibatch["clip_fraction"]
    return means


def _check_finite(stats: dict[str, float], iteration: int) -> None:
    """Stop at the first NaN/inf statistic, naming it: silent NaNs ruin every later number."""
    for name, value in stats.items():
        if isinstance(value, float) and not math.isfinite(value) and name != "explained_variance":
            raise FloatingPointError(f"PPO: statistic {name!r} is {value} at iteration {iteration}; "
                                     "training stopped (the last saved checkpoint is kept)")


class PPOTrainer:
    """PPO with a KL penalty to a frozen reference, on the prompts of the world.

    `train()` is the whole algorithm in one loop; everything else here is bookkeeping.
    """

    def __init__(self, policy, reference, reward_model, tokenizer, prompts: list[str], cfg: PPOConfig,
                 critic: ValueModel | None = None, ptx_rows: list[dict] | None = None):
        self.cfg, self.tokenizer, self.prompts = cfg, tokenizer, prompts
        self.policy = policy
        self.device = next(policy.parameters()).device
        # Frozen reference and reward model: eval mode, no gradients (PPO.md rule 4).
        self.reference = reference.eval().requires_grad_(False)
        self.reward_model = reward_model.eval().requires_grad_(False)
        self.critic = critic or ValueModel(copy.deepcopy(reward_model.backbone)).to(self.device)
        self.critic.requires_grad_(True)
        self.policy_optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=cfg.value_lr, eps=1e-5)
        self.kl_controller = (AdaptiveKLController(cfg.beta, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                              else FixedKLController(cfg.beta))
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.ptx_examples = encode_dialogues(tokenizer, ptx_rows) if ptx_rows and cfg.ptx_coef > 0 else []
        self.iteration = 0  # iterations completed
        self.history: list[dict] = []

    @torch.no_grad()
    def rollout(self, questions: list[str]) -> dict:
        """Sample answers and compute everything the update needs, with the pre-update policy."""
        cfg = self.cfg
        started = time.perf_counter()
        rollout = generate(self.policy, self.tokenizer, questions, cfg.max_new_tokens, cfg.temperature,
                           self.generator)
        generation_seconds = time.perf_counter() - started
        input_ids, attention_mask = rollout.input_ids.to(self.device), rollout.attention_mask.to(self.device)
        ctx, mask = rollout.context_length, rollout.response_mask.to(self.device)
        logprobs = response_logprobs(self.policy, input_ids, attention_mask, ctx, cfg.temperature)
        ref_logprobs = response_logprobs(self.reference, input_ids, attention_mask, ctx, cfg.temperature)
        values = response_values(self.critic, input_ids, attention_mask, ctx)
        # The reward model reads the last real token: the end token (PPO.md rules 5 and 6).
        scores = self.reward_model(input_ids, attention_mask).float()
        finished = rollout.finished.to(self.device)
        # No end token: a fixed penalty, so "never stop" cannot be a way to dodge a bad score (rule 7).
        penalised_scores = torch.where(finished, scores, scores + cfg.missing_end_penalty)
        rewards, kl = kl_penalised_rewards(penalised_scores, logprobs, ref_logprobs, mask, self.kl_controller.beta)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)  # after the returns were computed (rule 8, 9)
        scoring_seconds = time.perf_counter() - started - generation_seconds
        return dict(rollout=rollout, input_ids=input_ids, attention_mask=attention_mask, ctx=ctx, mask=mask,
                    logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, scores=scores, kl=kl,
                    rewards=rewards, advantages=advantages, returns=returns, finished=finished,
                    generation_seconds=generation_seconds, scoring_seconds=scoring_seconds)

    def _ptx_loss(self) -> Tensor:
        """The SFT loss on a random minibatch of demonstrations (answer tokens only)."""
        pick = torch.randint(len(self.ptx_examples), (self.cfg.ptx_batch_size,), generator=self.generator).tolist()
        ids, attention, loss_mask = (t.to(self.device) for t in
                                     collate([self.ptx_examples[i] for i in pick], self.tokenizer.pad_token_id, True))
        return lm_loss(forward(self.policy, ids, attention), ids, loss_mask)

    def update(self, batch: dict) -> dict[str, float]:
        """`ppo_epochs` passes of clipped policy and value updates over minibatches of the rollout."""
        cfg = self.cfg
        self.policy.train()
        self.critic.train()
        size = batch["input_ids"].shape[0]
        stats: dict[str, list[float]] = {}
        first_minibatch = None
        for index in minibatch_indices(size, cfg.minibatch_size, cfg.ppo_epochs, self.generator):
            ids, attention, mask, logits, logprobs = policy_minibatch(self.policy, batch, index, cfg.temperature)
            policy_loss, policy_stats = ppo_policy_loss(logprobs, batch["logprobs"][index],
                                                        batch["advantages"][index], mask, cfg.clip_eps)
            values = response_values(self.critic, ids, attention, batch["ctx"])
            value_loss, value_stats = ppo_value_loss(values, batch["values"][index], batch["returns"][index],
                                                     mask, cfg.value_clip_eps)
            loss = policy_loss + cfg.vf_coef * value_loss
            if self.ptx_examples:  # PPO-ptx: keep imitating the demonstrations a little
                ptx_loss = self._ptx_loss()
                loss = loss + cfg.ptx_coef * ptx_loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"PPO: the loss is {loss.item()} at iteration {self.iteration}; "
                                         "training stopped (the last saved checkpoint is kept)")
            self.policy_optimizer.zero_grad(set_to_none=True)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
            self.policy_optimizer.step()
            self.critic_optimizer.step()
            step_stats = {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                          **({"ptx_loss": ptx_loss.item()} if self.ptx_examples else {}),
                          "entropy": entropy_from_logits(logits.detach(), mask).item(), **policy_stats,
                          **value_stats}
            if first_minibatch is None:  # before any step: ratio must be exactly 1 (PPO.md)
                first_minibatch = dict(policy_stats)
            for name, value in step_stats.items():
                stats.setdefault(name, []).append(value)
        self.policy.eval()
        self.critic.eval()
        return update_means(stats, first_minibatch)

    def train(self, callback: Callable[[pd.DataFrame], None] | None = None, progress: bool = True,
              out: str | Path | None = None) -> pd.DataFrame:
        """The PPO loop. `callback(history)` after every iteration (a live plot, say)."""
        cfg = self.cfg
        bar = tqdm(range(self.iteration, cfg.iterations), desc="PPO", disable=not progress)
        for iteration in bar:
            pick = torch.randint(len(self.prompts), (cfg.batch_size,), generator=self.generator).tolist()
            questions = [self.prompts[i] for i in pick]
            batch = self.rollout(questions)
            started = time.perf_counter()
            update_stats = self.update(batch)
            update_seconds = time.perf_counter() - started
            mask, rollout = batch["mask"], batch["rollout"]
            kl_per_sequence = (batch["kl"] * mask).sum(dim=1)
            k3 = (kl_k3(batch["logprobs"], batch["ref_logprobs"]) * mask).sum(dim=1)
            true_scores = [world.judge(q, t, f).total for q, t, f in zip(questions, rollout.texts, rollout.finished.tolist())]
            row = {
                "iteration": iteration, "reward": batch["scores"].mean().item(),
                "true_score": sum(true_scores) / len(true_scores),  # never used for training
                "kl": kl_per_sequence.mean().item(), "kl_k3": k3.mean().item(), "beta": self.kl_controller.beta,
                "response_length": mask.sum(dim=1).mean().item(), "finished_rate": batch["finished"].float().mean().item(),
                "explained_variance": float(explained_variance(batch["values"], batch["returns"], mask)),
                **update_stats, "generation_seconds": batch["generation_seconds"],
                "scoring_seconds": batch["scoring_seconds"], "update_seconds": update_seconds,
            }
            _check_finite(row, iteration)
            # Adapt β with the batch mean of the summed per-token k1 (PPO.md rule 13).
            self.kl_controller.update(row["kl"], cfg.batch_size)
            self.history.append(row)
            bar.set_postfix(reward=f"{row['reward']:.2f}", true=f"{row['true_score']:.2f}", kl=f"{row['kl']:.2f}")
            self.iteration = iteration + 1  # iterations completed
            if callback is not None:
                callback(self.history_frame())
            if out is not None and (self.iteration % cfg.save_every == 0 or self.iteration == cfg.iterations):
                self.save(out)
        return self.history_frame()

    def history_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.history)
        frame.attrs["config"] = asdict(self.cfg)
        return frame

    # ----- checkpoints: safetensors and JSON only, so resuming never unpickles anything -----

    def save(self, out: str | Path) -> None:
        out = Path(out)
        save_policy(self.policy, self.tokenizer, out)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.critic.state_dict().items()},
                  str(out / "critic.safetensors"))
        for name, optimizer in (("policy", self.policy_optimizer), ("critic", self.critic_optimizer)):
            state = optimizer.state_dict()["state"]
            save_file({f"{index}.{key}": value.detach().cpu().contiguous().reshape(value.shape)
                       for index, entries in state.items() for key, value in entries.items()},
                      str(out / f"{name}_optimizer.safetensors"))
        self.history_frame().to_csv(out / "history.csv", index=False)
        (out / "trainer_state.json").write_text(json.dumps(
            {"iteration": self.iteration, "beta": self.kl_controller.beta, "config": asdict(self.cfg),
             "generator_state": self.generator.get_state().tolist()}, indent=1))

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint written by `save` (policy weights are loaded by the caller)."""
        path = Path(path)
        state_file = path / "trainer_state.json"
        if not state_file.is_file():
            raise FileNotFoundError(f"no PPO checkpoint to resume at {path.resolve()} (looked for {state_file})")
        state = json.loads(state_file.read_text())
        self.critic.load_state_dict(load_file(str(path / "critic.safetensors")))
        for name, optimizer in (("policy", self.policy_optimizer), ("critic", self.critic_optimizer)):
            tensors = load_file(str(path / f"{name}_optimizer.safetensors"))
            saved = optimizer.state_dict()
            for key, value in tensors.items():
                index, entry = key.split(".", 1)
                saved["state"].setdefault(int(index), {})[entry] = value
            optimizer.load_state_dict(saved)
        self.iteration = state["iteration"]
        self.kl_controller.beta = state["beta"]
        self.generator.set_state(torch.tensor(state["generator_state"], dtype=torch.uint8))
        self.history = pd.read_csv(path / "history.csv").to_dict("records")
