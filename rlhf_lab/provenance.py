"""What a run and a checkpoint say about themselves: provenance, a model card, sampling defaults.

Every `metrics.json` (`stages.save_run`) holds a `provenance` record, enough to tell months later
what made the numbers next to it:

    stage       the stage that ran (pretrain, sft, reward, ppo, dpo, rloo, grpo, best-of-n, sweep)
    scale, device, seed
    inputs      each input checkpoint and data file: its path and the first 16 hex digits of its
                SHA-256 (of model.safetensors for a checkpoint), so a changed input shows
    versions    python, torch, transformers, rlhf_lab
    git_commit  the repository's commit when the course runs from a git clone (git_dirty: whether
                files had changed), else null -- a machine without git never fails a run
    created     when the run ended (UTC)

Every checkpoint folder also gets a model card, `README.md` (the page the Hugging Face Hub shows):
what the model is, how to load it, what made it, from what, and its evaluation figures.

`generation_config.json` holds the course's sampling settings, so `model.generate(...)` and
`pipeline("text-generation")` sample as `policy.generate` does: plain temperature sampling at 0.7,
no top-k and no top-p (transformers' defaults would truncate the distribution; rule 2 of
docs/implementation_rules.md), at most 64 new tokens, stopping at `<|end|>`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from rlhf_lab import __version__
from rlhf_lab.config import REPO_DIR, SAMPLING_TEMPERATURE

MAX_NEW_TOKENS = 64  # what the evaluation samples (evaluate.EvalConfig); the answers of the world are shorter
MODEL_CARD = "README.md"
DIGEST_LENGTH = 16  # hex digits of SHA-256 kept: plenty to tell two files apart
# The figures a model card lists first, when metrics.json has them (the rest follow in its order).
HEADLINE_FIGURES = ("mean_score", "flawed_rate", "win_rate", "heldout_kl", "heldout_accuracy", "noise_ceiling")


def file_digest(path: Path) -> str:
    """The first DIGEST_LENGTH hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:DIGEST_LENGTH]


def describe_input(path) -> dict:
    """`{"path", "sha256"}` of an input: a data file, or a checkpoint folder (its model.safetensors)."""
    path = Path(path).resolve()
    weights = path / "model.safetensors" if path.is_dir() else path
    return {"path": str(path), "sha256": file_digest(weights) if weights.is_file() else None}


def library_versions() -> dict[str, str]:
    """The versions that decide what a run computes."""
    versions = {"python": platform.python_version(), "rlhf_lab": __version__}
    for name in ("torch", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state(repo_dir: Path = REPO_DIR) -> tuple[str | None, bool | None]:
    """`(commit, dirty)` of the git clone the course runs from; `(None, None)` if it is not one, or git is absent."""
    if not (Path(repo_dir) / ".git").exists():  # an installed wheel: no clone (and never a parent folder's)
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo_dir), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, or it hung
        return None, None
    return commit or None, bool(status.strip())


def run_record(stage: str, *, scale: str, device, seed: int, inputs: dict) -> dict:
    """The `provenance` entry of a run's metrics.json (see the module docstring).

    `inputs` maps a name ("policy", "reward", "prefs", ...) to a path; None entries are left out.
    """
    commit, dirty = git_state()
    return {"stage": stage, "scale": scale, "device": str(device), "seed": seed,
            "inputs": {name: describe_input(path) for name, path in inputs.items() if path is not None},
            "versions": library_versions(), "git_commit": commit, "git_dirty": dirty,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def sampling_generation_config(model_config):
    """A `GenerationConfig` with the course's sampling settings, for a policy's `generation_config.json`."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=SAMPLING_TEMPERATURE, top_k=0, top_p=1.0,
                            max_new_tokens=MAX_NEW_TOKENS, bos_token_id=model_config.bos_token_id,
                            eos_token_id=model_config.eos_token_id, pad_token_id=model_config.pad_token_id)


# =====================================================================================
# The model card: README.md in every checkpoint folder.
# =====================================================================================


def parameter_count(folder: Path) -> int:
    """Parameters stored in the folder's model.safetensors (read from its header; nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(folder) / "model.safetensors"), "np") as weights:
        for name in weights.keys():
            count = 1
            for size in weights.get_slice(name).get_shape():
                count *= size
            total += count
    return total


def _describe_model(folder: Path, config: dict) -> tuple[str, str, str]:
    """(what the model is, its Hugging Face pipeline tag, how to load it) from its config.json."""
    is_reward = "GPT2ForSequenceClassification" in config.get("architectures", [])
    size = (f"GPT-2 ({config['n_layer']} layers, width {config['n_embd']}, {parameter_count(folder):,} parameters, "
            f"{config['n_positions']} positions, a {config['vocab_size']}-token word-level vocabulary)")
    if is_reward:
        what = (f"A reward model: a {size} with a one-output score head, read at the last real token. "
                "Higher means the answer is more likely to be preferred; scores are normalised so the SFT "
                "policy's answers have mean 0 and standard deviation 1.")
        load = ("from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
                "model = AutoModelForSequenceClassification.from_pretrained(folder)  # or rlhf_lab.reward."
                "RewardModel.load(folder)\n"
                "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
                "# pad on the right, or pass position_ids=(mask.cumsum(-1) - 1).clamp(min=0) with left padding")
        return what, "text-classification", load
    what = (f"A policy: a {size} trained from scratch on RLHF Lab's generated toy world. It answers "
            "`<|user|> question <|assistant|>` (the chat template writes it) and ends with `<|end|>`.")
    load = ("from transformers import pipeline\n"
            "chat = pipeline(\"text-generation\", model=folder)  # samples with generation_config.json\n"
            "chat([{\"role\": \"user\", \"content\": \"hi!\"}])  # a prompt of over 128 tokens: "
            "handle_long_generation=\"hole\"\n"
            "# or: model, tokenizer = rlhf_lab.policy.load_policy(folder)")
    return what, "text-generation", load


def _made_by(record: dict | None, train_config: dict | None) -> list[str]:
    """The card's "How it was made" lines."""
    if record is None:
        lines = ["Not recorded: this checkpoint was made before runs recorded their provenance "
                 "(scale, device, inputs, library versions)."]
    else:
        versions = ", ".join(f"{name} {version}" for name, version in record["versions"].items())
        commit = record["git_commit"] or "not a git clone"
        lines = [f"- stage: `{record['stage']}`, scale `{record['scale']}`, device `{record['device']}`, "
                 f"seed {record['seed']}, finished {record['created']}",
                 f"- code: commit `{commit}`" + (" (with uncommitted changes)" if record["git_dirty"] else ""),
                 f"- libraries: {versions}", "- inputs:"]
        lines += [f"  - {name}: `{entry['path']}` (sha256 {entry['sha256']})"
                  for name, entry in record["inputs"].items()]
    if train_config:
        lines += ["", "Training settings (`train_config.json`): "
                  + ", ".join(f"`{key}={value}`" for key, value in train_config.items())]
    return lines


def _figure(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _evaluation(metrics: dict | None) -> list[str]:
    """The card's evaluation table: metrics.json's numbers (nested tables are left to the file)."""
    numbers = {key: value for key, value in (metrics or {}).items()
               if isinstance(value, int | float) and not isinstance(value, bool)}
    if not numbers:
        return ["No evaluation recorded."]
    ordered = [key for key in HEADLINE_FIGURES if key in numbers] + [k for k in numbers if k not in HEADLINE_FIGURES]
    return (["Measured when the run ended (`metrics.json`; the simulated human judges sampled answers to the "
             "held-out prompts, see `rlhf_lab.evaluate`):", "", "| figure | value |", "|---|---|"]
            + [f"| {key} | {_figure(numbers[key])} |" for key in ordered])


def model_card(folder, metrics: dict | None = None, record: dict | None = None, target=None) -> str:
    """The text of a checkpoint's README.md (see the module docstring).

    `folder` is where the card is written; `target` the checkpoint folder it describes when the card
    is written into a save's staging folder (`checkpoints.atomic_folder`): its name, and the model
    files the staging folder does not hold (yet).
    """
    from rlhf_lab.colab import repository_url

    folder = Path(folder)
    target = Path(target) if target is not None else folder
    model_folder = folder if (folder / "model.safetensors").is_file() else target
    config = json.loads((model_folder / "config.json").read_text())
    train_config_path = folder / "train_config.json"
    train_config = json.loads(train_config_path.read_text()) if train_config_path.is_file() else None
    what, pipeline_tag, load = _describe_model(model_folder, config)
    name = record["stage"] if record else target.name
    lines = ["---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}", "license: mit",
             "tags: [rlhf-lab, rlhf, toy-model]", "---", "", f"# RLHF Lab: `{name}`", "", what, "",
             f"Made by [RLHF Lab]({repository_url()}), a course that trains the whole RLHF pipeline on a laptop. "
             "It knows only the course's small world: questions outside it get nonsense.", "",
             "## Use", "", "```python", f"folder = \"{target.name}\"", load, "```", "",
             "## How it was made", "", *_made_by(record, train_config), "", "## Evaluation", "",
             *_evaluation(metrics)]
    return "\n".join(lines) + "\n"


def write_model_card(folder, metrics: dict | None = None, record: dict | None = None, target=None) -> Path:
    """Write `folder/README.md`; `record` defaults to the `provenance` in `metrics`; `target` as in
    `model_card`. An existing card is replaced, never written through (it may be a hard link into
    the checkpoint being replaced)."""
    folder = Path(folder)
    record = record if record is not None else (metrics or {}).get("provenance")
    path = folder / MODEL_CARD
    text = model_card(folder, metrics, record, target)
    path.unlink(missing_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
