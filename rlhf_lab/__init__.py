"""RLHF Lab: a tiny, complete RLHF pipeline you can read and run on a laptop.

Modules map to lessons (notebooks/NN_*.ipynb); each holds one idea.

    lesson  module               what it holds
    01      `world`              the toy world: facts, question templates, answers in nine styles
    01      `judge`              the simulated human: scores any answer; the simulated labeller
    01      `evaluate`           measuring a policy: behaviour rates, head-to-head, KL, the frontier
    02      `tokenizer`          the word-level tokenizer with chat markers
    02      `policy`             tiny GPT-2 policies: saving, loading, sampling, log-probs
    02      `sft`                pretraining and supervised fine-tuning (the prompt-masked loss)
    03      `preferences`        preference records and the append-only store
    03      `labelling`          sampling candidate answers; simulated labels at scale
    03      `labelling_widgets`  the widgets in which the learner labels
    04      `reward`             Bradley-Terry, the reward model and its training loop
    04      `reward_analysis`    accuracy against the noise ceiling, calibration, biases
    05      `masked`             means, sums and whitening over real tokens only
    05      `kl`                 KL estimators, the KL-penalised reward, the adaptive controller
    05      `ppo`                GAE, the clipped losses, the critic and the PPO trainer
    06      `reward_hacking`     the β sweep, the weak-leash run, the adaptive-KL run
    07      `dpo`                Direct Preference Optimisation
    07      `best_of_n`          best-of-n sampling and its KL
    07      `rloo_grpo`          RLOO and GRPO: critic-free group baselines
    all     `plotting`           the lessons' charts
    all     `diagrams`           the lessons' diagrams of each mechanism
    all     `exercises`          the checks of the learner's exercises
    all     `experiments`        guided experiments: knobs, and claims checked only at the defaults
    all     `stages`             each stage as one function, chained by `run_pipeline`
    all     `cli`                `python -m rlhf_lab` (`__main__` runs it)
    all     `config`             scales, devices, seeds, where files live
    all     `checks`             stopping a run at the first NaN, naming it
    all     `checkpoints`        checkpoint folders written all at once, and checked before they are read
    all     `data`               the world's corpora, generated from one seed, and their readers
    all     `jsonl`              JSON Lines files: checked reading, atomic writing
    all     `provenance`         what made a run (metrics.json), model cards, sampling defaults
    08      `trl_formats`        our data in TRL's conversational formats
    08      `colab`              running the lessons on Google Colab
    --      `maintain`           maintainers' commands that rewrite the repository's notebooks
    --      `lesson_runs`        running every lesson: their committed outputs, the course's wall time

The rules the RL code follows are numbered in docs/implementation_rules.md.
"""

__version__ = "0.2.0"
