#!/usr/bin/env bash
# One prepared GPU check (issue 8: benchmarks). On a CUDA machine it runs the tests
# marked `gpu`, a short DDGAN training with bf16 + channels_last + torch.compile, the
# sampling-speed table, trainer throughput (with GPU utilisation), trial packing (1, 2,
# 4, 8 trials on one GPU) and the evaluation cost (features/s; one final evaluation with
# and without cached references), and writes every table under OUT_DIR.
#
#   bash benchmarks/gpu_check.sh OUT_DIR          # on the GPU machine
#   bash benchmarks/gpu_check.sh OUT_DIR --dry    # CPU dry path (CI): tiny sizes, no CUDA needed
#
# Budget: BUDGET_S (default 570 s) for the whole check. Steps run most important first,
# each under its own time limit cut to what is left, so one slow step cannot eat the
# others; a step that no longer fits is skipped and listed in failures.txt. Every table is
# written as soon as its step ends. OUT_DIR gets at most 7 files (machine.txt, log.txt,
# failures.txt, four tables): run directories and the reference cache live in a temporary
# directory that is removed.
# Environment: PYTHON (default python), DDGAN_DATA_DIR (default ../shared/data/fashion-mnist),
# DDGAN_CACHE_DIR (default: a fresh temporary cache, i.e. cold), RAY_ADDRESS (packing joins
# this Ray cluster instead of starting its own; the tests pass theirs).
# Needs the project installed the normal way (`pip install -e .`: Ray, MLflow, Optuna, clean-fid)
# and the data. A bare machine without a package index: tools/gpu_check_bundled.sh (tools/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT_DIR [--dry]}
DRY=${2:-}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python}
export DDGAN_DATA_DIR=${DDGAN_DATA_DIR:-../shared/data/fashion-mnist}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export DDGAN_CACHE_DIR=${DDGAN_CACHE_DIR:-$TMP/cache}
exec > >(tee -a "$OUT/log.txt") 2>&1
DEADLINE=$((SECONDS + ${BUDGET_S:-570}))
status=0
fail() { echo "$1" | tee -a "$OUT/failures.txt"; status=1; }
# step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left); log its wall time.
step() {
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then fail "SKIPPED (budget spent): $name"; return; fi
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && fail "TIMED OUT after ${limit} s: $name"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] && fail "FAILED (exit $rc): $name"
  echo "   ($((SECONDS - t0)) s)"
}

if [ "$DRY" = "--dry" ]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # CI machines are shared: oversubscribed threads crawl
  DEV=cpu; PRESET=tiny; STEPS=20; TRAIN_EVAL="--set train.batch_size=16 --set eval.reference_n=500"
  SAMPLE="--batch 16 --ddgan-T 1 2 --ddpm-T 10 --repeats 1"; THROUGHPUT="--presets tiny --steps 3 --batch 16 --repeats 1"
  PACK="--concurrency 1 2 --tiny --cpus-per-trial 1"; EVAL="--tiny"
else
  DEV=cuda; PRESET=small; STEPS=300; TRAIN_EVAL=""
  SAMPLE="--batch 256"; THROUGHPUT="--presets small paper --steps 40 --repeats 1"
  PACK="--concurrency 1 2 4 8"
  # the full grid's final evaluation (FID on 10k samples); reference capped at 10k training
  # images to fit the budget (the full-split command is in benchmarks/RESULTS.md)
  EVAL="--grid full --final --set eval.reference_n=10000 --feature-images 60000 2000"
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
fi

{ echo "# GPU check $(date -u +%F) ${DRY:+(dry run)}"; $PY -c "from benchmarks.common import machine; print(machine())"
  [ "$DEV" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; } > "$OUT/machine.txt"
if [ "$DEV" = cuda ]; then
  step "tests marked gpu" 120 $PY -m pytest -q -m gpu tests -p no:cacheprovider
fi
step "short DDGAN training (bf16, channels_last, compile)" 120 $PY -m ddgan.train --config configs/ddgan.yaml \
  --out "$TMP/train-run" --quiet --set model.preset=$PRESET --set train.steps=$STEPS --set train.device=$DEV \
  --set train.compile=$([ "$DEV" = cuda ] && echo true || echo false) --set eval.every=$STEPS --set eval.n_samples=64 \
  $TRAIN_EVAL
step "sampling speed" 90 $PY -m benchmarks.sample_speed --preset $PRESET --device $DEV $SAMPLE --out "$OUT"
step "trainer throughput" 120 $PY -m benchmarks.train_throughput --device $DEV $THROUGHPUT --out "$OUT"
step "trial packing" 240 $PY -m benchmarks.packing --device $DEV $PACK ${RAY_ADDRESS:+--address "$RAY_ADDRESS"} \
  --out "$OUT"
step "evaluation cost" 150 $PY -m benchmarks.eval_cost --device $DEV $EVAL --out "$OUT"
echo "tables in $OUT"; ls "$OUT"
exit $status
