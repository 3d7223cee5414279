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
# requirements.txt pins the CPU machines' torch; from PyPI that version is a CUDA 13 build, which
# needs an NVIDIA driver >= 580. On GPU nodes use the CUDA 12.8 build the server image has (torch
# 2.9.1, driver >= 525 by CUDA's minor-version compatibility), and check it sees the GPU before
# anything starts.
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
echo "driver: $DRIVER"
pip install -q "torch==${GPU_TORCH:-2.9.1}"
python - <<'PY' || { echo "gpu_smoke: PyTorch $(python -c 'import torch; print(torch.__version__, torch.version.cuda)') cannot use this GPU with driver $DRIVER (CUDA 13 builds need >= 580; set GPU_TORCH to a build for this driver)" >&2; exit 2; }
import torch, sys
print("torch", torch.__version__, "CUDA", torch.version.cuda, "sees", torch.cuda.device_count(), "GPU(s)")
sys.exit(0 if torch.cuda.is_available() else 1)
PY
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
python -m benchmarks --profile "$PROFILE" --url 127.0.0.1:8001 --configs served:fp16 --reference_device cuda --in_flight 1,4,16 \
  --scaling_masks 10,50,100,200 --out "artifacts/bench/gpu-$PROFILE"
echo "card: $GPU; in-process: artifacts/bench/gpu-inprocess-$PROFILE/table.md;" \
  "served: artifacts/bench/gpu-$PROFILE/result.json; engines: artifacts/onnx/$PROFILE/tensorrt.json"
