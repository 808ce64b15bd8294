"""Maintainers' commands: they rewrite files of the repository, so they are not among the learner's.

    python -m rlhf_lab.maintain colab        write the Open-in-Colab badge and install cell into every
                                             lesson, and the badge table into the README
    python -m rlhf_lab.maintain checkpoints  bring the shipped checkpoints' side files up to date
                                             (tokenizer and generation configs, model cards) without
                                             touching their weights or config.json
    python -m rlhf_lab.maintain outputs [NN ...] [--no-write] [--json FILE]
                                             run the lessons at laptop scale, in order, in one fresh
                                             artifacts folder; write their outputs; print their times
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from rlhf_lab.colab import badge_markdown, install_cell, notebook_metadata, repository_url
from rlhf_lab.config import REPO_DIR
from rlhf_lab.provenance import MODEL_CARD, model_card, sampling_generation_config

BADGE_MARK = "Open In Colab"
INSTALL_MARK = "# On Colab only"


def _cell(cell_type: str, source: str, cell_id: str) -> dict:
    cell = {"cell_type": cell_type, "id": cell_id, "metadata": {}, "source": source.splitlines(keepends=True)}
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def colab_cells(notebook: str | Path) -> list[dict]:
    """The two cells every lesson starts with: the badge, then the install cell."""
    return [_cell("markdown", badge_markdown(notebook), "colab-badge"),
            _cell("code", install_cell(notebook), "colab-install")]


def write_notebook_cells(path: Path) -> bool:
    """Make `path` start with the current badge and install cell, with Colab's runtime settings in its
    metadata (`colab.notebook_metadata`: a GPU where one helps); True if the file changed.

    Written as nbformat writes a notebook (keys sorted, indent 1), so that it and
    `python -m rlhf_lab.maintain outputs` leave each other's files as they are; a notebook whose
    content is already up to date is not rewritten, whatever its layout.
    """
    original = json.loads(path.read_text(encoding="utf-8"))
    notebook = copy.deepcopy(original)
    cells, previous = notebook["cells"], []
    while cells and (BADGE_MARK in "".join(cells[0]["source"]) and cells[0]["cell_type"] == "markdown"
                     or "".join(cells[0]["source"]).startswith(INSTALL_MARK)):
        previous.append(cells.pop(0))  # the previous badge / install cell
    current = colab_cells(path)
    if [(cell["cell_type"], "".join(cell["source"])) for cell in previous] == \
            [(cell["cell_type"], "".join(cell["source"])) for cell in current]:
        current = previous  # up to date: keep them as they are, with the outputs of the last run
    notebook["cells"] = current + cells
    for key in ("accelerator", "colab"):
        notebook["metadata"].pop(key, None)
    notebook["metadata"].update(notebook_metadata(path))
    if notebook == original:
        return False
    path.write_text(json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


README_START, README_END = "<!-- colab-badges -->", "<!-- /colab-badges -->"


def readme_badges(notebooks: list[Path]) -> str:
    """The README's table of lessons with a badge each, between its two markers."""
    rows = ["| lesson | open |", "|---|---|"]
    for path in notebooks:
        rows.append(f"| [`{path.name}`](notebooks/{path.name}) | {badge_markdown(path)} |")
    return "\n".join([README_START, *rows, README_END])


def write_readme_badges(readme: Path, notebooks: list[Path]) -> bool:
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme}: no {README_START} ... {README_END} markers to put the Colab badges between")
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    new_text = before + readme_badges(notebooks) + after
    if new_text != text:
        readme.write_text(new_text, encoding="utf-8")
        return True
    return False


def write_colab_cells() -> list[str]:
    """Regenerate the Colab badge and install cell of every lesson from `colab.REPOSITORY`."""
    notebooks = sorted((REPO_DIR / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    changed = [str(path.relative_to(REPO_DIR)) for path in notebooks if write_notebook_cells(path)]
    if write_readme_badges(REPO_DIR / "README.md", notebooks):
        changed.append("README.md")
    print(f"Colab badges for {repository_url()}: " + (", ".join(changed) + " updated" if changed else "all up to date"))
    return changed


def write_outputs(lessons: list[str], write: bool = True, json_path: Path | None = None) -> None:
    from rlhf_lab.lesson_runs import run_lessons

    run_lessons(lessons or None, scale="laptop", write=write, json_path=json_path)


def _json_text(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _same_json(path: Path, text: str) -> bool:
    """Whether `path` holds the JSON in `text`, whichever transformers version wrote it."""
    if not path.is_file():
        return False
    old, new = json.loads(path.read_text(encoding="utf-8")), json.loads(text)
    old.pop("transformers_version", None)
    new.pop("transformers_version", None)
    return old == new


def refresh_checkpoint(folder: Path) -> list[str]:
    """Rewrite what `policy.save_policy` / `RewardModel.save` would write today beside the weights:
    tokenizer_config.json (no loading keys, `model_max_length` = n_positions), a policy's
    generation_config.json (the course's sampling settings) and README.md (the model card, from
    metrics.json). The weights and config.json are never touched. Returns the names of the files changed."""
    from transformers import AutoConfig

    from rlhf_lab.tokenizer import clean_tokenizer_config

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    files = {"tokenizer_config.json": _json_text(clean_tokenizer_config(tokenizer_config, config.n_positions))}
    if "GPT2ForSequenceClassification" not in (config.architectures or []):
        files["generation_config.json"] = sampling_generation_config(config).to_json_string(use_diff=True)
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
    changed = [name for name, text in files.items() if not _same_json(folder / name, text)]
    card = model_card(folder, metrics, (metrics or {}).get("provenance"))
    if not (folder / MODEL_CARD).is_file() or (folder / MODEL_CARD).read_text(encoding="utf-8") != card:
        files[MODEL_CARD] = card
        changed.append(MODEL_CARD)
    for name in changed:
        (folder / name).write_text(files[name], encoding="utf-8")
    return changed


def refresh_shipped_checkpoints(root: Path | None = None) -> list[str]:
    """`refresh_checkpoint` for every folder of data/checkpoints."""
    root = Path(root or REPO_DIR / "data" / "checkpoints")
    changed = [f"{folder.name}/{name}" for folder in sorted(root.iterdir()) if (folder / "config.json").is_file()
               for name in refresh_checkpoint(folder)]
    print(f"checkpoints in {root}: " + (", ".join(changed) + " updated" if changed else "all up to date"))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.maintain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("colab", help="rewrite the Colab badge and install cell of every lesson and the README")
    commands.add_parser("checkpoints", help="update the shipped checkpoints' side files (configs, model cards)")
    outputs = commands.add_parser("outputs", help="run the lessons at laptop scale and commit their outputs")
    outputs.add_argument("lessons", nargs="*", help="lesson numbers or names (default: every lesson)")
    outputs.add_argument("--no-write", action="store_true", help="only time the lessons; leave the notebooks")
    outputs.add_argument("--json", type=Path, default=None, help="also write the times to this JSON file")
    args = parser.parse_args(argv)
    if args.command == "colab":
        write_colab_cells()
    elif args.command == "checkpoints":
        refresh_shipped_checkpoints()
    else:
        write_outputs(args.lessons, write=not args.no_write, json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
