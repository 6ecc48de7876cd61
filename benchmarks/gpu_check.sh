#!/usr/bin/env bash
# One prepared check for a short GPU rental: on a fresh H100/H200 with the project installed
# (`pip install -e .`) and the data at $DDGAN_DATA_DIR it finishes in <= 8 minutes and writes
# under OUT_DIR what configs/costs.yaml needs:
#
#   1. the GPU tests (tests/test_gpu.py, tests/test_gpu_metrics.py but its compiled sampling: bf16,
#      channels_last, compile, checkpoints mapped to CUDA, speed alone, and a resume across an
#      R1 step compared with the uninterrupted run, EMA included); pytest is installed first if
#      missing (from $WHEELS when given, else the package index; offline: said so, step failed)
#   2. trainer img/s per preset and method at the full grid's batch (128), fp32 and bf16
#   3. the same with bf16 + torch.compile (the paper preset's DDGAN, the grid's)
#   4. sampling ms/image per preset at the grid's eval batch (500), channels_last, and the
#      DDPM S=1000 10k-sample FID sampling cost (extrapolated from 20 steps, labelled)
#   5. Inception ms/image (needs weights: $DDGAN_FID_WEIGHTS or clean-fid's /tmp copy)
#   6. 1, 2 and 4 trials packed on the GPU (steady-state aggregate img/s, benchmarks/packing.py --direct)
#   7. a clock-bounded training run of the full grid's DDGAN ns T=4 trial: fd_fmnist per
#      evaluation and its last sample grid (does it learn?)
#   8. a patch of configs/costs.yaml from the figures (benchmarks/costs_patch.py)
#
#   bash benchmarks/gpu_check.sh OUT_DIR              # on the GPU machine
#   bash benchmarks/gpu_check.sh --rehearse [OUT_DIR] # every step shrunk, on the CPU, < 5 minutes
#
# OUT_DIR (default $OUT, else a new temporary folder) gets at most 7 files: machine.txt,
# log.txt, failures.txt (only when a step failed), figures.json, tables.md, samples.png,
# costs.patch. Each step runs under `timeout` with its own limit (the limits add up to
# 475 s; BUDGET_S, default 480, caps the whole: a step that no longer fits is skipped and
# listed in failures.txt; the rehearsal doubles each limit and caps the whole at 300 s). Environment: PYTHON (default python, else python3), DDGAN_DATA_DIR
# (default ../shared/data/fashion-mnist), DDGAN_CACHE_DIR (default a fresh one, i.e. cold),
# DDGAN_FID_WEIGHTS, WHEELS (a folder of wheels for pytest). A bare machine without a package
# index: tools/gpu_check_bundled.sh (tools/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=""
DEST=""
for arg in "$@"; do
  case $arg in
    --rehearse|--dry) REHEARSE=1 ;;
    -*) echo "usage: gpu_check.sh [--rehearse] [OUT_DIR]" >&2; exit 2 ;;
    *) DEST=$arg ;;
  esac
done
DEST=${DEST:-${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-out.XXXXXX")}}
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd)
PY=${PYTHON:-$(command -v python >/dev/null && echo python || echo python3)}
export DDGAN_DATA_DIR=${DDGAN_DATA_DIR:-../shared/data/fashion-mnist}
export PYTHONUNBUFFERED=1
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export DDGAN_CACHE_DIR=${DDGAN_CACHE_DIR:-$TMP/cache}
FIG=$TMP/figures TAB=$TMP/tables
mkdir -p "$FIG" "$TAB"
exec > >(tee -a "$DEST/log.txt") 2>&1
# the rehearsal: the whole in 5 minutes, each step's limit doubled (a shared CPU starts processes slowly)
DEADLINE=$((SECONDS + ${BUDGET_S:-$([ -n "$REHEARSE" ] && echo 300 || echo 480)}))
SCALE=$([ -n "$REHEARSE" ] && echo 2 || echo 1)
status=0
fail() { echo "$1" | tee -a "$DEST/failures.txt"; status=1; }
# collect: every table so far into tables.md, the last sample grid into samples.png
collect() {
  find "$TAB" -name '*.md' | sort | while read -r f; do cat "$f"; echo; done > "$DEST/tables.md"
  [ -f "$TAB/7-learning/samples.png" ] && cp "$TAB/7-learning/samples.png" "$DEST/samples.png"
  return 0
}
# step NAME LIMIT_S CMD...: CMD under min(LIMIT_S, time left), its wall time logged
step() {
  local name=$1 limit=$(($2 * SCALE)); shift 2
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then fail "SKIPPED (budget spent): $name"; return; fi
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@"
  local rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then fail "TIMED OUT after ${limit} s: $name"
  elif [ "$rc" -ne 0 ]; then fail "FAILED (exit $rc): $name"; fi
  echo "   ($((SECONDS - t0)) s)"
  collect
}
ensure_pytest() {
  $PY -c "import pytest" 2>/dev/null && return 0
  echo "pytest is not installed: installing it"
  if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --find-links "$WHEELS" pytest && return 0
  fi
  timeout 40 $PY -m pip install -q --retries 0 --timeout 5 pytest && return 0
  echo "cannot install pytest here (no package index, no WHEELS folder): the GPU tests are NOT run;"
  echo "install pytest (pip install -e '.[test]') and run: $PY -m pytest -m gpu tests/test_gpu.py"
  return 1
}
gpu_tests() { ensure_pytest && $PY -m pytest -q -rA -m gpu tests/test_gpu.py tests/test_gpu_metrics.py -k "not compiled" -p no:cacheprovider; }
export PY && export -f ensure_pytest gpu_tests  # `timeout` runs them in a child bash

if [ -n "$REHEARSE" ]; then  # every step on the CPU at toy sizes: the script's paths, not its numbers
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  DEV=cpu
  TRAIN="--presets tiny --batch 8 --steps 2"; COMPILE="--presets tiny --methods ddgan --variants bf16"  # no compile on CPU
  SAMPLE="--presets tiny --batch 8 --ddgan-T 1 --ddpm-T 10 --repeats 1 --fid-samples 16 --probe-steps 2"
  INCEPTION="--tiny --feature-images 4"
  [ -z "${DDGAN_FID_WEIGHTS:-}" ] && INCEPTION="$INCEPTION --inception-stand-in $TMP/inception-STAND-IN-FOR-REHEARSAL-ONLY.pt"
  PACK="--tiny --concurrency 1 2 --steps 2"
  LEARN="--grid smoke --T 1 --seconds 5 --eval-every 5 --n-samples 32 --set eval.reference_n=256 --set eval.grid_size=4"
else
  DEV=cuda
  TRAIN="--presets tiny small paper --batch 128 --steps 28"  # 2 warm-up + 28 timed: R1 (every 15) twice
  COMPILE="--presets paper --methods ddgan --variants bf16+compile"  # one compile (G; D stays eager for R1)
  SAMPLE="--presets tiny small paper --batch 500 --ddgan-T 1 4 --ddpm-T 10 --repeats 2 --fid-samples 10000 --probe-steps 20"
  INCEPTION="--grid full --feature-images 2000"
  PACK="--grid full --concurrency 1 2 4 --steps 40 --threads 2"
  LEARN="--grid full --loss ns --T 4 --seconds 110 --eval-every 500 --expect-learning"
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || { fail "no CUDA device"; exit 1; }
fi

{ echo "# GPU check $(date -u '+%F %H:%M UTC')${REHEARSE:+ (REHEARSAL on the CPU: toy sizes, not figures)}"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  $PY -c "from benchmarks.common import machine; print(machine())"
  [ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; } > "$DEST/machine.txt"

step "1 GPU tests (resume across R1, bf16, compile)" 70 bash -c gpu_tests
step "2 trainer img/s, fp32 and bf16" 50 $PY -m benchmarks.train_throughput --device $DEV --methods ddgan ddpm \
  --variants fp32 bf16 $TRAIN --repeats 1 --json "$FIG/train.json" --out "$TAB/2-train"
step "3 trainer img/s, bf16 + compile" 60 $PY -m benchmarks.train_throughput --device $DEV $COMPILE \
  --batch "$([ -n "$REHEARSE" ] && echo 8 || echo 128)" --steps "$([ -n "$REHEARSE" ] && echo 2 || echo 28)" \
  --repeats 1 --json "$FIG/train-compile.json" --out "$TAB/3-compile"
step "4 sampling ms/image (channels_last) and DDPM S=1000 FID sampling" 30 $PY -m benchmarks.sample_speed \
  --device $DEV $SAMPLE --channels-last --json "$FIG/sample.json" --out "$TAB/4-sample"
step "5 Inception ms/image" 25 $PY -m benchmarks.eval_cost --device $DEV --skip-evaluation --extractors inception \
  $INCEPTION --json "$FIG/inception.json" --out "$TAB/5-inception"
step "6 trials packed per GPU (1, 2, 4)" 65 $PY -m benchmarks.packing --direct --device $DEV $PACK \
  --json "$FIG/packing.json" --out "$TAB/6-packing"
step "7 learning run (DDGAN ns, T=4)" 165 $PY -m benchmarks.learning_check --device $DEV $LEARN \
  --json "$FIG/learning.json" --out "$TAB/7-learning"
step "8 costs.yaml patch" 10 $PY -m benchmarks.costs_patch "$FIG" --merged "$DEST/figures.json" \
  --patch "$DEST/costs.patch"
echo "results in $DEST:"; ls "$DEST"
exit $status
