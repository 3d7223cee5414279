#!/usr/bin/env bash
# Set up (if needed) and run every test, printing each test's outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check ssa tests export client benchmarks model_repository
python -m pytest -rA -v "$@"
