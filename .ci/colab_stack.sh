#!/usr/bin/env bash
# The Colab stack: the tests that touch notebook-facing packages, run against the versions Colab
# ships or the oldest we claim, instead of the newest ones installed globally.
#
#   .ci/colab_stack.sh          (from anywhere; .ci/run calls it after torch is installed)
#
# It builds .venv-colab: a venv that sees the global site-packages (torch, nbval, ...) but shadows
#   ipywidgets   with 7.7.1, the version Colab ships (JupyterLab 4 uses 8.x), and
#   transformers with the floor pyproject.toml claims (transformers>=X installs X; Colab ships 5.x,
#                so the floor is older than Colab's and any version in between is covered by the two runs),
# and runs, in it: the widget tests, the policy and tokenizer tests, plain transformers reading the
# reward model (test_hf_reward.py; its TRL test skips, TRL needs a newer transformers), and lessons 03 and 05 under
# nbval at ci scale. Every one of them must exist and pass; skipping is failing here.
#
# COLAB_TRANSFORMERS=4.46.3 .ci/colab_stack.sh   tests another transformers version instead.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-colab
COLAB_IPYWIDGETS=7.7.1
TESTS=(tests/test_labelling_widgets.py tests/test_policy.py tests/test_tokenizer.py tests/test_colab.py tests/test_hf_reward.py)
NOTEBOOKS=(notebooks/03_preferences.ipynb notebooks/05_ppo.ipynb)

# Fail loudly, before building anything, if a file this check is about is missing.
missing=()
for path in "${TESTS[@]}" "${NOTEBOOKS[@]}"; do
  [ -f "$path" ] || missing+=("$path")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "colab_stack: missing ${missing[*]}: the Colab-stack check cannot run without them" >&2
  exit 1
fi

# The oldest transformers we claim: the `>=` bound of pyproject.toml's transformers requirement.
transformers_floor=$(python - <<'EOF'
import re, sys, tomllib

with open("pyproject.toml", "rb") as file:
    requirements = tomllib.load(file)["project"]["dependencies"]
spec = next((r for r in requirements if re.match(r"transformers\b", r)), None)
floor = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", spec or "")
if not floor:
    sys.exit(f"pyproject.toml: project.dependencies has no 'transformers>=X' floor (found: {spec!r})")
print(floor.group(1))
EOF
)
transformers_version=${COLAB_TRANSFORMERS:-$transformers_floor}
echo "colab_stack: ipywidgets==$COLAB_IPYWIDGETS, transformers==$transformers_version (pyproject's floor: $transformers_floor)"

python -m venv --clear --system-site-packages "$VENV"
# One resolve for the pins and the package itself, so pip cannot upgrade a pin to satisfy a
# dependency. The venv gets only what differs from the global site-packages (the pins and what
# they need: an older tokenizers and huggingface_hub), plus anything the global site lacks.
# pip may warn that globally installed trl/datasets want a newer transformers: lesson 08 is not
# part of this check.
"$VENV/bin/python" -m pip install --quiet "ipywidgets==$COLAB_IPYWIDGETS" "transformers==$transformers_version" -e ".[test]"

# The venv must really shadow the global versions (the kernel nbval starts is this interpreter).
"$VENV/bin/python" - "$COLAB_IPYWIDGETS" "$transformers_version" <<'EOF'
import sys

import ipywidgets
import transformers
from packaging.version import Version

wanted_ipywidgets, wanted_transformers = sys.argv[1], sys.argv[2]
assert ipywidgets.__version__ == wanted_ipywidgets, f"ipywidgets {ipywidgets.__version__} != {wanted_ipywidgets}"
assert Version(transformers.__version__) == Version(wanted_transformers), \
    f"transformers {transformers.__version__} != {wanted_transformers}"
print(f"colab_stack: {sys.executable}: ipywidgets {ipywidgets.__version__}, transformers {transformers.__version__}")
EOF

# --nbval-current-env: the notebooks' kernel is this venv's Python, not the global `python3` kernel.
# The junit report lets us demand that every file had at least one test pass (a file whose tests
# all skipped would otherwise slip through with exit status 0).
report="$VENV/colab-stack-junit.xml"
RLHF_LAB_SCALE=ci "$VENV/bin/python" -m pytest "${TESTS[@]}" "${NOTEBOOKS[@]}" \
  --nbval-current-env -o addopts="--nbval-lax -p no:cacheprovider" --junitxml="$report" -rs
"$VENV/bin/python" - "$report" "${TESTS[@]}" "${NOTEBOOKS[@]}" <<'EOF'
import sys
import xml.etree.ElementTree as ElementTree

report, paths = sys.argv[1], sys.argv[2:]
passed = {path: 0 for path in paths}
for case in ElementTree.parse(report).iter("testcase"):
    outcome = {child.tag for child in case}
    if outcome & {"skipped", "failure", "error"}:
        continue
    name = case.get("file") or case.get("classname", "").replace(".", "/")
    for path in paths:
        stem = path.rsplit(".", 1)[0]
        if name == path or name.startswith(stem):
            passed[path] += 1
empty = [path for path, count in passed.items() if count == 0]
if empty:
    sys.exit(f"colab_stack: no test passed in {', '.join(empty)} (all skipped?)")
print("colab_stack: passed per file:", ", ".join(f"{path} {count}" for path, count in passed.items()))
EOF
