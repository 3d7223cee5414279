#!/usr/bin/env bash
# Set up (if needed), build the example set and the tiny models, and annotate the example set.
# PROFILE=bench uses real-size random models (slow on a CPU); light/full need real checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
PROFILE=${PROFILE:-tiny}
[ -f artifacts/examples/sa_1.json ] || ssa examples --out artifacts/examples
ssa reference --profile "$PROFILE" --data_dir artifacts/examples --out_dir "artifacts/out/$PROFILE" --save_img
echo "outputs: artifacts/out/$PROFILE/*_semantic.json and *_semantic.png"
