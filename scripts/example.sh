#!/usr/bin/env bash
# The main job: set up (if needed), build the example set and a profile's models, export them to
# ONNX (each file checked against PyTorch), generate the Triton model repository, start the
# embedded tritonserver and annotate the example set through it over gRPC with the batch runner,
# then gather the outputs into one COCO instances file.
# PROFILE=bench uses real-size random models (slow on a CPU); light/full need real checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TRANSFORMERS_VERBOSITY=error
PROFILE=${PROFILE:-tiny}
[ -f artifacts/examples/sa_1.json ] || ssa examples --out artifacts/examples
[ -f "artifacts/models/$PROFILE/profile.json" ] || ssa models --profile "$PROFILE"
[ -f "artifacts/onnx/$PROFILE/manifest.json" ] || python -m export --profile "$PROFILE"
python -m model_repository generate --profile "$PROFILE" --target cpu
ssa annotate --embedded "artifacts/repository/$PROFILE-cpu" --data artifacts/examples \
  --out_dir "artifacts/out/$PROFILE" --save_img
ssa coco --semantic_dir "artifacts/out/$PROFILE" --out "artifacts/out/$PROFILE.coco.json"
echo "outputs: artifacts/out/$PROFILE/*_semantic.json and *_semantic.png; COCO: artifacts/out/$PROFILE.coco.json"
