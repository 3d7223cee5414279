#!/usr/bin/env bash
# Create .venv with everything the project needs (idempotent; a second run only checks).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.ssa-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r requirements.txt
  # Only for CLIP's BPE vocabulary file; --no-deps keeps its torchvision requirement out.
  python -m pip install --quiet --no-deps open_clip_torch==3.3.0
  python -m pip install --quiet --no-deps -e .
  touch "$stamp"
fi
