"""Progress bars on every loop a learner waits on, off where a caller (a trainer, a test) says so.

Each bar is recorded by replacing the module's `tqdm` with a subclass that remembers what it made;
the bars are real tqdm bars (written to stderr), so what they count is what a learner sees.
"""

import pytest
import torch
from tqdm.auto import tqdm
from world_questions import WORLD_QUESTIONS as QUESTIONS

from rlhf_lab import best_of_n, labelling, policy, stages
from rlhf_lab.config import PROGRESS_DELAY
from rlhf_lab.evaluate import eval_config, measure_policy


@pytest.fixture
def bars(monkeypatch):
    """Every tqdm bar policy.generate, labelling and stages make during the test, in order."""
    made = []

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.settings = kwargs
            made.append(self)

    for module in (policy, labelling, stages):
        monkeypatch.setattr(module, "tqdm", Recording)
    return made


def shown(bars) -> list:
    """The bars that were switched on (a closed bar reads `disable`, so ask what it was made with)."""
    return [bar for bar in bars if not bar.settings.get("disable")]


def test_generate_counts_every_decoding_step_of_every_chunk(sft, bars, capsys):
    model, tokenizer = sft
    questions = QUESTIONS * 3
    with_bar = policy.generate(model, tokenizer, questions, max_new_tokens=16, batch_size=8,
                               generator=torch.Generator().manual_seed(0), progress=True)
    [bar] = bars
    chunks = -(-len(questions) // 8)
    assert bar.total == chunks * 16 and bar.n == bar.total, "early-ending chunks count their unneeded steps"
    assert bar.settings["delay"] == PROGRESS_DELAY and bar.settings["leave"] is False
    assert f"sampling {len(questions)} answers" in bar.desc
    quiet = policy.generate(model, tokenizer, questions, max_new_tokens=16, batch_size=8,
                            generator=torch.Generator().manual_seed(0))
    assert not shown(bars[1:]), "off by default: a trainer's rollouts sit under the trainer's bar"
    assert quiet.texts == with_bar.texts, "the bar changes nothing that is sampled"


def test_a_slow_loop_shows_its_bar_and_a_quick_one_stays_quiet(sft, monkeypatch, capsys):
    model, tokenizer = sft
    monkeypatch.setattr(policy, "PROGRESS_DELAY", 0.0)
    policy.generate(model, tokenizer, QUESTIONS, max_new_tokens=8, progress=True)
    assert "sampling" in capsys.readouterr().err
    monkeypatch.setattr(policy, "PROGRESS_DELAY", 3600.0)
    policy.generate(model, tokenizer, QUESTIONS, max_new_tokens=8, progress=True)
    assert "sampling" not in capsys.readouterr().err


def test_measurement_sampling_and_best_of_n_show_progress_unless_told_not_to(sft, reward_model, bars):
    model, tokenizer = sft
    cfg = eval_config("ci", max_new_tokens=8)
    measure_policy(model, tokenizer, QUESTIONS, cfg)
    labelling.sample_candidates(model, tokenizer, QUESTIONS, k=2, max_new_tokens=8)
    best_of_n.best_of_n_sample(model, reward_model, tokenizer, QUESTIONS, n=2, max_new_tokens=8)
    assert len(shown(bars)) == 3
    bars.clear()
    measure_policy(model, tokenizer, QUESTIONS, cfg, progress=False)
    labelling.sample_candidates(model, tokenizer, QUESTIONS, k=2, max_new_tokens=8, progress=False)
    best_of_n.best_of_n_sample(model, reward_model, tokenizer, QUESTIONS, n=2, max_new_tokens=8, progress=False)
    assert len(bars) == 3 and not shown(bars)


@pytest.mark.slow
def test_simulated_labelling_counts_prompts_and_the_label_stage_counts_pairs(bars, tmp_path, shipped):
    candidates = [(question, [f"answer {i}." for i in range(3)]) for question in QUESTIONS]
    records = labelling.simulate_labels(candidates)
    [bar] = bars
    assert bar.n == bar.total == len(QUESTIONS) and len(records) == 3 * len(QUESTIONS)
    bars.clear()
    result = stages.label_stage(tmp_path / "preferences.jsonl", policy_dir=shipped / "sft", n_pairs=30)
    stage_bar = next(bar for bar in bars if bar.desc == "simulated labels")
    assert stage_bar.total == 30 and stage_bar.n == result["written"] == 30
    assert any("sampling" in bar.desc for bar in shown(bars)), "the candidates' sampling too"


def test_trainers_keep_generation_bars_off(new_ppo_trainer, bars):
    new_ppo_trainer().train(progress=False)
    assert bars and not shown(bars), "PPO's rollouts draw no bar of their own"


@pytest.mark.slow
def test_a_stage_told_progress_false_draws_no_bar(bars, tmp_path, shipped):
    stages.train_lm_stage(tmp_path / "sft", stage="sft", scale="ci", policy_dir=shipped / "base", steps=1,
                          progress=False)
    assert bars and not shown(bars), "the held-out evaluation's sampling is quiet too"
