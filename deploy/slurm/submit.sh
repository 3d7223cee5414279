#!/usr/bin/env bash
# Submit a many-node run: the array job (one task per node's share) and the merge job that runs
# once every task has ended well (--dependency=afterok). Prints both job ids.
#
#   SSA_DATA=/data/sa1b SSA_OUT=/shared/ssa-out SSA_SERVER=apptainer SSA_IMAGE=ssa-server.sif \
#   SSA_REPOSITORY=/shared/repository/light-gpu deploy/slurm/submit.sh TASKS [sbatch options...]
#
# TASKS: the array's size (nodes' shares). The sbatch options go to the array job (partition,
# --gres=gpu:1, --time, --cpus-per-task, ...); SSA_MERGE_OPTIONS to the merge job. Every SSA_*
# setting of deploy/task.sh is passed on through the environment (sbatch --export=ALL).
set -euo pipefail
tasks=${1:?usage: submit.sh TASKS [sbatch options...]}; shift
here=$(dirname "$(realpath "$0")")
: "${SSA_DATA:?set SSA_DATA}" "${SSA_OUT:?set SSA_OUT}"
mkdir -p "$SSA_OUT/logs"
export SSA_DEPLOY=${SSA_DEPLOY:-$(realpath "$here/..")}
array=$(sbatch --parsable --export=ALL --array="0-$(( tasks - 1 ))" \
  --output="$SSA_OUT/logs/slurm-%A_%a.out" "$@" "$here/ssa-array.sbatch")
array=${array%%;*}
# shellcheck disable=SC2086  # SSA_MERGE_OPTIONS is a list of words
merge=$(sbatch --parsable --export=ALL --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  --output="$SSA_OUT/logs/slurm-merge-%j.out" ${SSA_MERGE_OPTIONS:-} "$here/ssa-merge.sbatch")
merge=${merge%%;*}
echo "array job $array ($tasks tasks), merge job $merge (after every task ends well)"
echo "progress: ssa status --out_dir $SSA_OUT --data $SSA_DATA"
echo "$array $merge" > "$SSA_OUT/logs/jobs"
