"""Maintainers' commands: they rewrite files of the repository, so they are not among the learner's.

    python -m rlhf_lab.maintain colab    write the Open-in-Colab badge and install cell into every
                                         lesson, and the badge table into the README
    python -m rlhf_lab.maintain outputs [NN ...] [--no-write] [--json FILE]
                                         run the lessons at laptop scale, in order, in one fresh
                                         artifacts folder; write their outputs; print their times
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhf_lab.colab import badge_markdown, install_cell, repository_url
from rlhf_lab.config import REPO_DIR

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
    """Make `path` start with the current badge and install cell; True if the file changed."""
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    cells = notebook["cells"]
    while cells and (BADGE_MARK in "".join(cells[0]["source"]) and cells[0]["cell_type"] == "markdown"
                     or "".join(cells[0]["source"]).startswith(INSTALL_MARK)):
        cells.pop(0)  # the previous badge / install cell
    notebook["cells"] = colab_cells(path) + cells
    new_text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if new_text != text:
        path.write_text(new_text, encoding="utf-8")
        return True
    return False


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.maintain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("colab", help="rewrite the Colab badge and install cell of every lesson and the README")
    outputs = commands.add_parser("outputs", help="run the lessons at laptop scale and commit their outputs")
    outputs.add_argument("lessons", nargs="*", help="lesson numbers or names (default: every lesson)")
    outputs.add_argument("--no-write", action="store_true", help="only time the lessons; leave the notebooks")
    outputs.add_argument("--json", type=Path, default=None, help="also write the times to this JSON file")
    args = parser.parse_args(argv)
    if args.command == "colab":
        write_colab_cells()
    else:
        write_outputs(args.lessons, write=not args.no_write, json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
