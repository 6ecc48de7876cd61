#!/usr/bin/env bash
# A GPU Ray cluster rehearsed on one machine: the `full` grid's shape, every cell shrunk to a few
# steps, runs on two Ray nodes with an MLflow server and Optuna on PostgreSQL; one worker node is
# killed mid-trial and its trial finishes on the other from its checkpoint; then the driver is
# killed (SIGKILL) and `python -m study.run ... --resume` finishes the study. Exit 0 only when
# every check at the end passes.
#
#   bash benchmarks/cluster_rehearsal.sh [WORK_DIR]      (default: a new /tmp/rh.XXXXXX)
#
# Needs the project installed with its test and cluster extras (pip install -e ".[test,cluster]":
# tests/servers.py starts the servers) and the PostgreSQL server binaries (Debian `postgresql`),
# Fashion-MNIST in $DDGAN_DATA_DIR (default ../shared/data/fashion-mnist). Run it from a clean
# clone: it checks that nothing was written into the repository.
#
# What runs where (everything on 127.0.0.1; nothing reaches another host):
#   WORK/h, WORK/n      the two Ray nodes' temp dirs (`ray start --temp-dir`; each node started
#                       from its own working dir, WORK/head and WORK/node2), 1 CPU and 1 fake GPU
#                       each (`--num-gpus 1`); trials take 1 CPU and 0.5 GPU, the device is forced
#                       to the CPU by the grid (train.device=cpu): one trial per node at a time
#   WORK/shared         what a cluster keeps on a shared filesystem, given once as absolute paths:
#                       Ray storage (--storage-path), the reference cache (--cache-dir), the
#                       Inception weights (--fid-weights: a TorchScript stand-in, the plumbing is
#                       the point); the data is read where it lies (--data-dir, absolute)
#   WORK/servers        PostgreSQL (databases optuna and mlflow) and `mlflow server` on it with its
#                       own --artifacts-destination, started by tests/servers.py
#   WORK/state          the driver's own state (plan.json, history.json)
# Ray's token authentication is on (RAY_AUTH_MODE=token, the token in WORK/auth_token for every
# node and the driver). PostgreSQL and MLflow listen on 127.0.0.1 only; Ray's processes run on this
# machine under its own address (`ray start` names a node by the host's address).
#
# The grid (WORK/grid.yaml, written by benchmarks/cluster_rehearsal.py from configs/grids/full.yaml):
# full's axes subsampled so that 2 shared CPU cores finish in minutes: all 4 losses x T {1, 4}
# (full: 1..10) x lr 1.6e-4 (full: 3 lr), DDPM T {10, 1000} (full: 7 T), the T=1000 model sampled
# with S=10 (full: 7 S) by both samplers: 12 trials. Tiny preset, 60 steps, an evaluation (and a
# checkpoint) every 20, fd_fmnist on 128 samples, Inception (stand-in) on 64 at the end.
# Measured: 402 s on 2 lightly loaded cores (benchmarks/cluster_rehearsal.log); 824 s at load 10-14.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-python}
WORK=${1:-$(mktemp -d /tmp/rh.XXXXXX)}  # short: Ray's socket paths live under it
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) && chmod 755 "$WORK"
DATA=$(cd "${DDGAN_DATA_DIR:-$REPO/../shared/data/fashion-mnist}" && pwd)
SHARED=$WORK/shared
START=$(date +%s)
say() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*"; }

unset DDGAN_CACHE_DIR DDGAN_FID_WEIGHTS RAY_ADDRESS
export OMP_NUM_THREADS=1 MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export TMPDIR=$WORK/tmp  # the servers' data dirs, anything else that asks for a temp dir
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$WORK/auth_token
mkdir -p "$TMPDIR" "$WORK/head" "$WORK/node2" "$WORK/servers" "$SHARED/weights" && chmod 755 "$TMPDIR"
$PY -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH" && chmod 600 "$RAY_AUTH_TOKEN_PATH"

# What must not change: the repository (results/runs included) and the per-user defaults.
WATCHED=("$REPO" "$HOME/.cache/ddgan" "$HOME/ray_results" "$HOME/.ray")
SERVERS_PID="" DRIVER_PID=""
node_pids() {  # the processes of one Ray node: every one inherits the marker its `ray start` had
  for p in /proc/[0-9]*; do
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "DDGAN_REHEARSAL_NODE=$1"; then echo "${p#/proc/}"; fi
  done
}
kill_node() { local pids; pids=$(node_pids "$1"); [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true; }
cleanup() {
  [ -z "$DRIVER_PID" ] || kill -9 "$DRIVER_PID" 2>/dev/null || true
  kill_node "$WORK/n"; kill_node "$WORK/h"
  if [ -n "$SERVERS_PID" ]; then kill -TERM "$SERVERS_PID" 2>/dev/null || true; wait "$SERVERS_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

say "work dir $WORK, repository $REPO at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), data $DATA"
$PY -m benchmarks.cluster_rehearsal snapshot "$WORK/before.json" "${WATCHED[@]}"
$PY -m benchmarks.cluster_rehearsal grid "$WORK/grid.yaml" >/dev/null
$PY -m benchmarks.cluster_rehearsal stand-in "$SHARED/weights/inception-stand-in.pt" >/dev/null

say "servers: PostgreSQL and mlflow server (tests/servers.py)"
$PY -m benchmarks.cluster_rehearsal serve "$WORK/servers" > "$WORK/servers/serve.log" 2>&1 &
SERVERS_PID=$!
for _ in $(seq 240); do [ -s "$WORK/servers/servers.env" ] || ! kill -0 $SERVERS_PID 2>/dev/null && break; sleep 0.5; done
[ -s "$WORK/servers/servers.env" ] || { cat "$WORK/servers/serve.log"; say "FAIL: servers did not start"; exit 1; }
. "$WORK/servers/servers.env"
say "$(tail -n 1 "$WORK/servers/serve.log")"

free_port() { $PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
HEAD_PORT=$(free_port)
ADDRESS=127.0.0.1:$HEAD_PORT
FAST_DETECTION='{"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}'
say "ray: head on $ADDRESS, a worker node; 1 CPU and 1 fake GPU each"
(cd "$WORK/head" && DDGAN_REHEARSAL_NODE=$WORK/h ray start --head --node-ip-address 127.0.0.1 --port "$HEAD_PORT" \
  --num-cpus 1 --num-gpus 1 --temp-dir "$WORK/h" \
  --include-dashboard false --disable-usage-stats --system-config "$FAST_DETECTION") > "$WORK/head/ray-start.log" 2>&1 \
  || { cat "$WORK/head/ray-start.log"; exit 1; }
(cd "$WORK/node2" && DDGAN_REHEARSAL_NODE=$WORK/n ray start --address "$ADDRESS" --node-ip-address 127.0.0.1 --num-cpus 1 --num-gpus 1 \
  --temp-dir "$WORK/n" --disable-usage-stats) > "$WORK/node2/ray-start.log" 2>&1 \
  || { cat "$WORK/node2/ray-start.log"; exit 1; }
HEAD_ID=$($PY -m benchmarks.cluster_rehearsal node-id "$ADDRESS" "$WORK/h/")
WORKER_ID=$($PY -m benchmarks.cluster_rehearsal node-id "$ADDRESS" "$WORK/n/")
say "head node ${HEAD_ID:0:8}, worker node ${WORKER_ID:0:8}"

STUDY_ARGS=(--grid "$WORK/grid.yaml" --address "$ADDRESS" --state-dir "$WORK/state"
  --storage-path "$SHARED/ray" --mlflow-uri "$MLFLOW_URI" --optuna-storage "$OPTUNA_URL"
  --data-dir "$DATA" --fid-weights "$SHARED/weights/inception-stand-in.pt" --cache-dir "$SHARED/cache")
say "driver: python -m study.run --grid $WORK/grid.yaml --address $ADDRESS ... (log: $WORK/driver-1.log)"
$PY -m study.run "${STUDY_ARGS[@]}" > "$WORK/driver-1.log" 2>&1 &
DRIVER_PID=$!
fail_with_driver() { tail -n 40 "$WORK/$2"; say "FAIL: $1"; exit 1; }

VICTIM=$($PY -m benchmarks.cluster_rehearsal wait on-node "$MLFLOW_URI" "$WORKER_ID" --timeout 900) \
  || fail_with_driver "no trial reached an evaluation on the worker node" driver-1.log
say "trial $VICTIM runs on the worker node past an evaluation: killing the worker node (SIGKILL, raylet and all)"
kill_node "$WORK/n"
MOVED=$($PY -m benchmarks.cluster_rehearsal wait moved "$MLFLOW_URI" "$VICTIM" --timeout 600) \
  || fail_with_driver "$VICTIM did not continue elsewhere" driver-1.log
say "retried: $MOVED"
PARTIAL=$($PY -m benchmarks.cluster_rehearsal wait partial "$MLFLOW_URI" "$VICTIM" --timeout 900) \
  || fail_with_driver "no moment with a finished and a half-trained trial" driver-1.log
kill -0 "$DRIVER_PID" 2>/dev/null || fail_with_driver "the driver ended before it could be killed" driver-1.log
say "trial $PARTIAL is half-trained and another completed: killing the driver (SIGKILL)"
kill -9 "$DRIVER_PID"; wait "$DRIVER_PID" 2>/dev/null || true; DRIVER_PID=""

say "resume: python -m study.run ... --resume (log: $WORK/driver-2.log)"
if ! timeout 1200 $PY -m study.run "${STUDY_ARGS[@]}" --resume > "$WORK/driver-2.log" 2>&1; then
  fail_with_driver "--resume did not finish (exit $?)" driver-2.log
fi
say "resumed study finished; its summary:"
sed -n '/^study /,$p' "$WORK/driver-2.log" | head -n 20 | sed 's/^/    /'

kill_node "$WORK/h"
$PY -m benchmarks.cluster_rehearsal snapshot "$WORK/after.json" "${WATCHED[@]}"
say "checks:"
if $PY -m benchmarks.cluster_rehearsal verify "$MLFLOW_URI" "$OPTUNA_URL" "$WORK/state" "$VICTIM" "$WORKER_ID" \
    "$HEAD_ID" "$WORK/before.json" "$WORK/after.json"; then
  say "PASS: cluster rehearsal in $(( $(date +%s) - START )) s"
else
  say "FAIL: see above (logs in $WORK)"
  exit 1
fi
