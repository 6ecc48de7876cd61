#!/usr/bin/env bash
# One prepared GPU check (issue: benchmarks). On a CUDA machine it runs the tests
# marked `gpu`, a short DDGAN training with bf16 + channels_last + torch.compile,
# the sampling-speed table, trainer throughput and the trial-packing measurement,
# and writes every table under OUT_DIR. Budget: under 10 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh OUT_DIR          # on the GPU machine
#   bash benchmarks/gpu_check.sh OUT_DIR --dry    # CPU dry path (CI): tiny sizes, no CUDA needed
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT_DIR [--dry]}
DRY=${2:-}
mkdir -p "$OUT"
PY=${PYTHON:-python}
DATA=${DDGAN_DATA_DIR:-../shared/data/fashion-mnist}
export DDGAN_DATA_DIR=$DATA
status=0
step() { echo "== $1"; shift; local t0=$SECONDS; "$@" || { echo "FAILED: $*" | tee -a "$OUT/failures.txt"; status=1; }; echo "   ($((SECONDS - t0)) s)"; }

if [ "$DRY" = "--dry" ]; then
  DEV=cpu; PRESET=tiny; STEPS=20; SAMPLE_T="--ddgan-T 1 2 --ddpm-T 10"; TP_PRESETS="tiny"; PACK="1 2"
else
  DEV=cuda; PRESET=small; STEPS=300; SAMPLE_T=""; TP_PRESETS="small paper"; PACK="1 2 4 8"
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>/dev/null
fi

{ echo "# GPU check $(date -u +%F)"; $PY -c "from benchmarks.common import machine; print(machine())"; } > "$OUT/machine.txt"
if [ "$DRY" != "--dry" ]; then
  step "tests marked gpu" $PY -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
fi
step "short DDGAN training (bf16, channels_last, compile)" $PY -m ddgan.train --config configs/ddgan.yaml \
  --out "$OUT/train-run" --quiet --set model.preset=$PRESET --set train.steps=$STEPS --set train.device=$DEV \
  --set train.compile=$([ "$DEV" = cuda ] && echo true || echo false) --set eval.every=$STEPS --set eval.n_samples=64
step "sampling speed" $PY -m benchmarks.sample_speed --preset $PRESET --device $DEV --batch 256 $SAMPLE_T --out "$OUT"
step "trainer throughput" $PY -m benchmarks.train_throughput --presets $TP_PRESETS --device $DEV \
  --steps $([ "$DRY" = --dry ] && echo 5 || echo 50) --out "$OUT"
if [ -f benchmarks/packing.py ]; then
  step "trial packing" $PY -m benchmarks.packing --device $DEV --concurrency $PACK --out "$OUT" \
    $([ "$DRY" = --dry ] && echo --tiny)
fi
echo "tables in $OUT"; ls "$OUT"
exit $status
