#!/usr/bin/env bash
# GPU smoke run, on a node with an NVIDIA GPU, Docker with the NVIDIA container toolkit, and the
# NGC images reachable. Every comparison runs the reference on the same GPU as the engine:
# 1. the in-process GPU benchmark (PyTorch only): reference vs engine fp32 and fp16 on this GPU;
# 2. export the profile to ONNX, build and check its TensorRT engines, generate the gpu repository,
#    start tritonserver (docker compose) and run the served benchmark against it, the reference
#    again on this GPU (--reference_device cuda). Prints the figures with the card's name.
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
[ -f "artifacts/models/$PROFILE/profile.json" ] || ssa models --profile "$PROFILE" ${SNAPSHOT_DIR:+--snapshot_dir "$SNAPSHOT_DIR"}
python -m benchmarks --device cuda --precision fp32,fp16 --profile "$PROFILE" --out "artifacts/bench/gpu-inprocess-$PROFILE"
[ -f artifacts/examples/sa_1.json ] || ssa examples --out artifacts/examples
[ -f "artifacts/onnx/$PROFILE/manifest.json" ] || python -m export --profile "$PROFILE"
SSA_EXPORT="artifacts/onnx/$PROFILE" docker compose --profile build run --rm build_engines
python -m model_repository generate --profile "$PROFILE" --target gpu
export SSA_REPOSITORY="artifacts/repository/$PROFILE-gpu"
docker compose build tritonserver
docker compose up -d --wait tritonserver
trap 'docker compose down' EXIT
python -m benchmarks --profile "$PROFILE" --url 127.0.0.1:8001 --reference_device cuda --in_flight 1,4,16 \
  --scaling_masks 10,50,100,200 --out "artifacts/bench/gpu-$PROFILE"
echo "card: $GPU; in-process: artifacts/bench/gpu-inprocess-$PROFILE/table.md;" \
  "served: artifacts/bench/gpu-$PROFILE/result.json; engines: artifacts/onnx/$PROFILE/tensorrt.json"
