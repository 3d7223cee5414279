#!/usr/bin/env bash
# The main job: set up (if needed), build the example set and a profile's models, export them to
# ONNX (each file checked against PyTorch), generate the Triton model repository, start the
# embedded tritonserver and annotate the example set through it over gRPC with the batch runner,
# then gather the outputs into one COCO instances file.
# PROFILE=bench uses real-size random models (slow on a CPU); light/full need real checkpoints.
# PHOTOS=<folder of photos, no JSON> runs SSA + SAM on it instead: SAM's masks first, then the labels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TRANSFORMERS_VERBOSITY=error
PROFILE=${PROFILE:-tiny}
[ -f artifacts/examples/sa_1.json ] || ssa examples --out artifacts/examples
[ -f "artifacts/models/$PROFILE/profile.json" ] || ssa models --profile "$PROFILE"
[ -f "artifacts/models/$PROFILE/sam/config.json" ] || ssa models --profile "$PROFILE" --roles sam  # older profiles
[ -f "artifacts/onnx/$PROFILE/manifest.json" ] || python -m export --profile "$PROFILE"
grep -q '"sam_decoder"' "artifacts/onnx/$PROFILE/manifest.json" || \
  python -m export --profile "$PROFILE" --only sam_encoder,sam_decoder
python -m model_repository generate --profile "$PROFILE" --target cpu
DATA=${PHOTOS:-artifacts/examples}
OUT="artifacts/out/$PROFILE${PHOTOS:+-photos}"
ssa annotate --embedded "artifacts/repository/$PROFILE-cpu" --data "$DATA" --out_dir "$OUT" --save_img
ssa coco --semantic_dir "$OUT" --out "$OUT.coco.json"
SAM_NOTE=""
NAME=$(basename "$(realpath "$DATA")")  # outputs mirror the input: $OUT/<input folder's name>/
[ -z "${PHOTOS:-}" ] || SAM_NOTE=" (masks made by SAM: $OUT/$NAME/<stem>.json)"
echo "outputs: $OUT/$NAME/*_semantic.json and *_semantic.png$SAM_NOTE; COCO: $OUT.coco.json"
