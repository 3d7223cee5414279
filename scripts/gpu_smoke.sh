#!/usr/bin/env bash
# GPU smoke run, on a node with an NVIDIA GPU, Docker with the NVIDIA container toolkit, and the
# NGC images reachable: export a profile to ONNX, build and check its TensorRT engines, generate
# the gpu repository, start tritonserver (docker compose), then run the benchmark against it:
# reference (PyTorch, this venv) vs the served engine on the same images and masks, which also
# reports label agreement. Prints the figures with the card's name.
#
#   PROFILE=light bash scripts/gpu_smoke.sh      # light/full need the checkpoints (hub or SNAPSHOT_DIR)
#   PROFILE=bench bash scripts/gpu_smoke.sh      # real sizes, random weights, no download
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-bench}
command -v nvidia-smi >/dev/null || { echo "gpu_smoke: no nvidia-smi: this needs a machine with an NVIDIA GPU" >&2; exit 2; }
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $GPU"
bash scripts/setup.sh
. .venv/bin/activate
export TRANSFORMERS_VERBOSITY=error
[ -f artifacts/examples/sa_1.json ] || ssa examples --out artifacts/examples
[ -f "artifacts/models/$PROFILE/profile.json" ] || ssa models --profile "$PROFILE" ${SNAPSHOT_DIR:+--snapshot_dir "$SNAPSHOT_DIR"}
[ -f "artifacts/onnx/$PROFILE/manifest.json" ] || python -m export --profile "$PROFILE"
SSA_EXPORT="artifacts/onnx/$PROFILE" docker compose --profile build run --rm build_engines
python -m model_repository generate --profile "$PROFILE" --target gpu
export SSA_REPOSITORY="artifacts/repository/$PROFILE-gpu"
docker compose build tritonserver
docker compose up -d --wait tritonserver
trap 'docker compose down' EXIT
python -m benchmarks --profile "$PROFILE" --url 127.0.0.1:8001 --in_flight 1,4,16 --scaling_masks 10,50,100,200 \
  --out "artifacts/bench/gpu-$PROFILE"
echo "card: $GPU; engines: artifacts/onnx/$PROFILE/tensorrt.json; result: artifacts/bench/gpu-$PROFILE/result.json"
