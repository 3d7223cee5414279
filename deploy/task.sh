#!/usr/bin/env bash
# One task of a many-node run: start this node's tritonserver, wait until it is ready, label this
# task's share of the dataset (`ssa annotate --shard INDEX/COUNT`), stop the server whatever
# happens. The Slurm array job (deploy/slurm/) and the Kubernetes Indexed Job (deploy/k8s/) both
# run it.
#
#   deploy/task.sh INDEX COUNT
#
# Settings (environment):
#   SSA_DATA        the inputs, as ssa annotate's --data takes them (space-separated)   [required]
#   SSA_OUT         the output folder, shared by every task                             [required]
#   SSA_SERVER      how the server runs:
#                     embedded   the embedded tritonserver of the ssa package (CPU nodes; no container)
#                     apptainer  tritonserver in the project's server image, `apptainer exec --nv`
#                     enroot     tritonserver in the image through pyxis/enroot (`srun --container-image`)
#                     url        a server that already runs (SSA_URL), started by someone else
#                   (default: embedded)
#   SSA_REPOSITORY  the generated model repository (embedded, apptainer, enroot)
#   SSA_IMAGE       the server image: a .sif file (apptainer) or an image name (enroot)
#   SSA_URL         host:port of the server's gRPC endpoint (url)
#   SSA_ARGS        more arguments for ssa annotate (e.g. "--in_flight 8 --save_img")
#   SSA_GRACE       seconds the requests in flight get after SIGTERM (ssa annotate --grace; default 20)
#   SSA_READY_TIMEOUT  seconds to wait for the server to become ready (default 900)
#   SSA_PYTHON      the Python that has the ssa package, e.g. the project's .venv on the shared
#                   file system (default python3); it runs the runner (and the embedded server)
#
# Signals: SIGTERM / SIGINT to this script (Slurm's `--signal=B:TERM@...`, `scancel --signal=TERM
# --batch`, Kubernetes' pod termination) are passed to the runner only, which drains: no new
# image, the requests in flight finish (the server keeps serving them), then it exits with 75.
# The server is stopped after the runner, in every case. A signal while the server is still
# starting (no runner yet) stops the server and exits 75: nothing was done, the rerun starts over.
#
# Exit status: the runner's (0 done; 1 some files failed; 3 servers unreachable; 75 interrupted:
# run the task again to resume), or 4 when the server did not start.
set -uo pipefail
index=${1:?usage: task.sh INDEX COUNT}
count=${2:?usage: task.sh INDEX COUNT}
: "${SSA_DATA:?set SSA_DATA to the inputs}" "${SSA_OUT:?set SSA_OUT to the output folder}"
mode=${SSA_SERVER:-embedded}
grace=${SSA_GRACE:-20}
ready_timeout=${SSA_READY_TIMEOUT:-900}
python=${SSA_PYTHON:-python3}
log_dir="$SSA_OUT/logs"
mkdir -p "$log_dir"
say() { echo "[task $index/$count $(date +%H:%M:%S)] $*" >&2; }
free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

server_pid=""
runner_pid=""
stop_server() {
  [[ -n $server_pid ]] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    say "stopping the server (pid $server_pid)"
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 90); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$server_pid" 2>/dev/null
  fi
  wait "$server_pid" 2>/dev/null
  server_pid=""
}
forward() {  # a signal to this script: the runner drains; a second one stops it at once
  if [[ -z $runner_pid ]]; then  # still starting the server: nothing done yet, nothing to drain
    say "$1 before the runner started: stopping the server; exit 75 (interrupted, to resume)"
    stop_server; exit 75
  fi
  say "$1: passed to the runner (it drains; the server keeps serving the requests in flight)"
  kill -"$1" "$runner_pid" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap stop_server EXIT

grpc_port=$(free_port); http_port=$(free_port)
url="127.0.0.1:$grpc_port"
server_log="$log_dir/tritonserver-$index-of-$count.log"
case $mode in
  embedded)
    : "${SSA_REPOSITORY:?set SSA_REPOSITORY to the generated model repository}"
    "$python" -m model_repository serve --repository "$SSA_REPOSITORY" --grpc_port "$grpc_port" \
      --http_port "$http_port" --timeout "$ready_timeout" > "$server_log" 2>&1 &
    server_pid=$! ;;
  apptainer)
    : "${SSA_REPOSITORY:?set SSA_REPOSITORY}" "${SSA_IMAGE:?set SSA_IMAGE to the server image, a .sif file}"
    apptainer exec --nv --bind "$SSA_REPOSITORY:/models:ro" "$SSA_IMAGE" \
      tritonserver --model-repository=/models --model-control-mode=explicit --load-model='*' \
      --strict-readiness=true --exit-on-error=true --grpc-port="$grpc_port" --http-port="$http_port" \
      --allow-metrics=false > "$server_log" 2>&1 &
    server_pid=$! ;;
  enroot)
    : "${SSA_REPOSITORY:?set SSA_REPOSITORY}" "${SSA_IMAGE:?set SSA_IMAGE to the server image}"
    srun --overlap --ntasks=1 --container-image="$SSA_IMAGE" --container-mounts="$SSA_REPOSITORY:/models:ro" \
      tritonserver --model-repository=/models --model-control-mode=explicit --load-model='*' \
      --strict-readiness=true --exit-on-error=true --grpc-port="$grpc_port" --http-port="$http_port" \
      --allow-metrics=false > "$server_log" 2>&1 &
    server_pid=$! ;;
  url)
    url=${SSA_URL:?set SSA_URL to the gRPC address of the server, host:port}; http_port="" ;;
  *) say "SSA_SERVER=$mode: expected embedded, apptainer, enroot or url"; exit 2 ;;
esac

if [[ -n $server_pid ]]; then
  say "waiting for the server ($mode, gRPC $url, log $server_log)"
  deadline=$(( $(date +%s) + ready_timeout ))
  until "$python" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$http_port/v2/health/ready', timeout=5).status != 200)" 2>/dev/null; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      say "the server exited while starting; its log:"; tail -n 30 "$server_log" >&2; exit 4
    fi
    if (( $(date +%s) > deadline )); then
      say "the server was not ready after ${ready_timeout}s; its log:"; tail -n 30 "$server_log" >&2; exit 4
    fi
    sleep 2
  done
  say "server ready"
fi

# shellcheck disable=SC2086  # SSA_DATA and SSA_ARGS are lists of words
"$python" -m ssa annotate --url "$url" --shard "$index/$count" --data $SSA_DATA --out_dir "$SSA_OUT" \
  --grace "$grace" --retry_limit 300 ${SSA_ARGS:-} &
runner_pid=$!
status=0
while :; do  # `wait` returns early when a trapped signal arrives: wait again for the runner's own end
  wait "$runner_pid"; status=$?
  kill -0 "$runner_pid" 2>/dev/null || break
done
runner_pid=""
say "runner exited with status $status"
stop_server
exit "$status"
