"""Test-session defaults, set when pytest starts, before any test or notebook kernel runs.

They are environment variables (not fixtures) because nbval runs each notebook in a separate
kernel process, which inherits this process's environment. Anything already set wins, so
`RLHF_LAB_SCALE=laptop python -m pytest notebooks/` tests the notebooks at laptop scale.
"""

import atexit
import importlib.util
import os
import shutil
import tempfile

# Small models and few steps: every lesson in about a minute (see rlhf_lab/config.py).
os.environ.setdefault("RLHF_LAB_SCALE", "ci")
# Plots render to memory: no window pops up, and it works on a machine without a display.
os.environ.setdefault("MPLBACKEND", "Agg")

# Checkpoints, labels and logs go to a fresh folder, never into the learner's own artifacts/.
# It is removed when pytest exits (even after a usage error); a folder the caller chose via
# RLHF_LAB_ARTIFACTS is theirs to inspect and is left alone.
if "RLHF_LAB_ARTIFACTS" not in os.environ:
    os.environ["RLHF_LAB_ARTIFACTS"] = tempfile.mkdtemp(prefix="rlhf-lab-test-artifacts-")
    atexit.register(shutil.rmtree, os.environ["RLHF_LAB_ARTIFACTS"], ignore_errors=True)


def pytest_report_header(config) -> list[str]:
    return [f"RLHF_LAB_SCALE={os.environ['RLHF_LAB_SCALE']}, RLHF_LAB_ARTIFACTS={os.environ['RLHF_LAB_ARTIFACTS']}"]



# Lesson 08 needs the optional `trl` extra (`pip install -e ".[trl]"`); CI installs it and sets
# RLHF_LAB_REQUIRE_TRL=1 so that a missing TRL fails instead of skipping.
collect_ignore = []
if importlib.util.find_spec("trl") is None and os.environ.get("RLHF_LAB_REQUIRE_TRL") != "1":
    collect_ignore.append("notebooks/08_scaling_up.ipynb")
