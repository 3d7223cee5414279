#!/usr/bin/env bash
# perf_analyzer against every compute model and ssa_engine of a running tritonserver.
#
#   python -m benchmarks.perf_inputs --repository artifacts/repository/light-gpu   # input files
#   URL=127.0.0.1:8001 bash benchmarks/perf_analyzer.sh                            # needs perf_analyzer
#
# perf_analyzer ships in the Triton SDK image (nvcr.io/nvidia/tritonserver:<version>-py3-sdk; see
# the perf_analyzer service of docker-compose.yml); it does not install on every machine
# (ENVIRONMENT.md). Results: one CSV per model in $OUT, and the summary lines on stdout.
# Batch sizes: ssa_engine and OneFormer take one image per request; the crop models take the
# masks of an image, so they are measured at BATCH rows per request.
set -euo pipefail
URL=${URL:-127.0.0.1:8001}
INPUTS=${INPUTS:-artifacts/perf_inputs}
OUT=${OUT:-artifacts/perf_analyzer}
BATCH=${BATCH:-16}
CONCURRENCY=${CONCURRENCY:-1:4}
command -v perf_analyzer >/dev/null || { echo "perf_analyzer not found: run this in the Triton SDK image" >&2; exit 2; }
[ -f "$INPUTS/ssa_engine.json" ] || { echo "no input files in $INPUTS: run python -m benchmarks.perf_inputs" >&2; exit 2; }
mkdir -p "$OUT"
declare -A BATCHES=([ssa_engine]=1 [oneformer_coco]=1 [oneformer_ade20k]=1 [blip_vision]=$BATCH
  [blip_caption]=$BATCH [clip_image]=$BATCH [clip_text]=$BATCH [clipseg_visual]=$BATCH
  [clipseg_text]=$BATCH [clipseg_decoder]=$BATCH)
for model in oneformer_coco oneformer_ade20k blip_vision blip_caption clip_image clip_text \
             clipseg_visual clipseg_text clipseg_decoder ssa_engine; do
  echo "== $model (batch ${BATCHES[$model]}, concurrency $CONCURRENCY)"
  perf_analyzer -m "$model" -u "$URL" -i grpc -b "${BATCHES[$model]}" \
    --input-data "$INPUTS/$model.json" --concurrency-range "$CONCURRENCY" \
    --measurement-mode count_windows --measurement-request-count 20 \
    -f "$OUT/$model.csv" | grep -E "Concurrency:|Throughput|Avg latency" || echo "   perf_analyzer failed for $model"
done
echo "CSV files: $OUT"
