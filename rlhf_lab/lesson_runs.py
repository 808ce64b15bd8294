"""Running the lessons end to end: the outputs committed with them, and the course's wall time.

The lessons are committed *with* the outputs of one `laptop`-scale run, so that their figures and
tables read on GitHub and in Colab's preview without running anything. One command makes them:

    python -m rlhf_lab.maintain outputs            run every lesson in order, write its outputs
    python -m rlhf_lab.maintain outputs --no-write --json times.json   only time the course

It runs the lessons in order, each in a fresh kernel, all sharing one fresh artifacts folder -- as a
learner who works through the course would -- and records in each notebook's metadata the SHA-256 of
its cell sources (`source_sha256`): tests/test_lesson_outputs.py fails when a lesson's committed
outputs were not produced from its current cells. Progress bars are transient, so they are left
out of the saved outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

from rlhf_lab.config import REPO_DIR

NOTEBOOKS = REPO_DIR / "notebooks"
METADATA_KEY = "rlhf_lab"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def lessons(names: list[str] | None = None) -> list[Path]:
    """The lesson notebooks (`notebooks/NN_*.ipynb`), all or those whose number or name is given."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return found
    chosen = [path for path in found if any(path.name.startswith(name) or path.stem == name for name in names)]
    unknown = [name for name in names if not any(path.name.startswith(name) or path.stem == name for path in found)]
    if unknown:
        raise ValueError(f"no lesson {unknown}; the lessons are {[path.stem for path in found]}")
    return chosen


def source_sha256(notebook: dict) -> str:
    """SHA-256 of a notebook's cells as written (type and source), not of their outputs."""
    cells = [[cell["cell_type"], "".join(cell["source"])] for cell in notebook["cells"]]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode("utf-8")).hexdigest()


# tqdm's text form of a bar: "desc:  45%|####5     | 18/40 [00:10<00:12,  1.80it/s]".
TQDM_BAR = re.compile(r"\d+%\|.*\| *[\d.]+\w*/[\d.?]+\w* \[")


def _is_progress_bar(output: dict) -> bool:
    """A tqdm bar: a widget view (its text form tqdm's bar, or an HBox of a progress bar), or \\r updates."""
    data = output.get("data", {})
    text = "".join(data.get("text/plain", "")) if data else "".join(output.get("text", ""))
    if WIDGET_VIEW in data:
        return bool(TQDM_BAR.search(text)) or "Progress(" in text or text.startswith("HBox(children=(HTML(")
    return output.get("output_type") == "stream" and output.get("name") == "stderr" and "%|" in text


def drop_progress_bars(notebook: dict) -> None:
    """Drop progress bars from the outputs; the saved widget state goes too when no widget is left to show."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [output for output in cell["outputs"] if not _is_progress_bar(output)]
    outputs = [output for cell in notebook["cells"] for output in cell.get("outputs", [])]
    shown = any(WIDGET_VIEW in output.get("data", {}) for output in outputs)
    if not shown:
        notebook["metadata"].pop("widgets", None)


def execute(path: Path, artifacts: Path, scale: str, timeout: int = 1800) -> tuple[dict, float]:
    """Run one lesson top to bottom in a fresh kernel; returns the executed notebook and its seconds."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    environment = {"RLHF_LAB_SCALE": scale, "RLHF_LAB_ARTIFACTS": str(artifacts)}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)  # the kernel inherits this process's environment
    try:
        started = time.perf_counter()
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        seconds = time.perf_counter() - started
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    return notebook, seconds


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _machine() -> dict:
    import torch

    return {"cpu": _cpu_name(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load": os.getloadavg()[0]}


def run_lessons(names: list[str] | None = None, scale: str = "laptop", write: bool = True,
                json_path: Path | None = None) -> list[dict]:
    """Run the lessons in order in one fresh artifacts folder; write their outputs; print and return the times."""
    import nbformat

    times = []
    with tempfile.TemporaryDirectory(prefix="rlhf-lab-course-") as artifacts:
        for path in lessons(names):
            notebook, seconds = execute(path, Path(artifacts), scale)
            times.append({"lesson": path.stem, "seconds": round(seconds, 1)})
            print(f"{path.stem:32s} {seconds:7.1f} s", flush=True)
            if write:
                drop_progress_bars(notebook)
                notebook.metadata[METADATA_KEY] = {"source_sha256": source_sha256(notebook), "scale": scale,
                                                   "seconds": round(seconds, 1), "machine": _machine()}
                nbformat.write(notebook, path)
    total = sum(row["seconds"] for row in times)
    print(f"{'total':32s} {total:7.1f} s")
    if json_path is not None:
        Path(json_path).write_text(json.dumps({"scale": scale, "machine": _machine(), "lessons": times,
                                               "total_seconds": round(total, 1)}, indent=2) + "\n")
    return times
