"""Fixtures the test files share: the shipped checkpoints, loaded fresh, and world questions.

Loading a nano checkpoint takes a few milliseconds, so every fixture here hands out a fresh copy:
a test may train or modify what it gets without touching any other test. Tests that need a
trained run share one (see tests/test_ppo_trainer.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from world_questions import WORLD_QUESTIONS

from rlhf_lab.config import data_dir


@pytest.fixture
def questions() -> list[str]:
    return list(WORLD_QUESTIONS)


@pytest.fixture(scope="session")
def shipped() -> Path:
    """The folder of the shipped checkpoints: base/, sft/ and reward/."""
    return data_dir() / "checkpoints"


@pytest.fixture
def sft(shipped):
    """`(policy, tokenizer)` of the shipped SFT checkpoint, fresh for each test."""
    from rlhf_lab.policy import load_policy

    return load_policy(shipped / "sft")


@pytest.fixture
def base(shipped):
    """`(policy, tokenizer)` of the shipped base (pretrained) checkpoint, fresh for each test."""
    from rlhf_lab.policy import load_policy

    return load_policy(shipped / "base")


@pytest.fixture
def reward_model(shipped):
    """The shipped reward model, in eval mode."""
    from rlhf_lab.reward import RewardModel

    return RewardModel.load(shipped / "reward")[0]


def make_ppo_trainer(sft, reward_model=None, prompts=None, seed: int = 0, **overrides):
    """A small PPO trainer on the SFT policy (also the reference). Without a reward model it gets
    one with a random head on the SFT backbone: any scores will do for the mechanics."""
    from rlhf_lab import ppo
    from rlhf_lab.reward import RewardModel

    policy, tokenizer = sft
    reference = copy.deepcopy(policy)
    if reward_model is None:
        torch.manual_seed(seed)
        reward_model = RewardModel.from_policy(policy)
    settings = dict(iterations=2, batch_size=8, minibatch_size=4, ppo_epochs=2, max_new_tokens=24, seed=seed)
    cfg = ppo.PPOConfig(**{**settings, **overrides})
    return ppo.PPOTrainer(policy, reference, reward_model, tokenizer, prompts or list(WORLD_QUESTIONS), cfg)


@pytest.fixture(scope="session")
def new_ppo_trainer(shipped):
    """`new_ppo_trainer(seed=0, **config)`: a fresh small PPO trainer on the shipped SFT policy."""
    from rlhf_lab.policy import load_policy

    return lambda reward_model=None, prompts=None, seed=0, **overrides: make_ppo_trainer(
        load_policy(shipped / "sft"), reward_model, prompts, seed, **overrides)
