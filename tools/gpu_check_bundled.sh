#!/usr/bin/env bash
# benchmarks/gpu_check.sh on a bare GPU machine, from the bundle of tools/gpu_bundle.py
# (see tools/README.md): unpack GPU_BUNDLE (default .gpu/bundle.tar.xz) into a temporary
# directory, put its packages and this repo on PYTHONPATH, read the data from it, time
# Inception with random weights of the same graph (a file named ...FOR-TIMING-ONLY.pt, so
# no FID it computes is reported), then run the check with the time that is left.
#
#   PYTHON=python3 bash tools/gpu_check_bundled.sh OUT_DIR [--rehearse]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check_bundled.sh OUT_DIR [--rehearse]}
PY=${PYTHON:-python}
BUNDLE=${GPU_BUNDLE:-.gpu/bundle.tar.xz}
BUDGET=${BUDGET_S:-540}  # the unpacking counts too; the check itself caps at 480 s
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bundle.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
fail() { echo "$1" | tee -a "$OUT/log.txt" "$OUT/failures.txt"; exit 1; }
echo "== unpacking $BUNDLE" | tee -a "$OUT/log.txt"
$PY -m tarfile -e "$BUNDLE" "$TMP/bundle" >> "$OUT/log.txt" 2>&1 || fail "cannot unpack $BUNDLE"
export PYTHONPATH="$TMP/bundle/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export DDGAN_DATA_DIR=$TMP/bundle/data
DDGAN_FID_WEIGHTS=$($PY -m tools.gpu_bundle timing-inception "$TMP/bundle/inception/architecture.pt" \
  "$TMP/bundle/inception" 2>> "$OUT/log.txt") || fail "cannot build the timing Inception"
export DDGAN_FID_WEIGHTS
left=$((BUDGET - SECONDS))
BUDGET_S=$((left < 480 ? left : 480)) bash benchmarks/gpu_check.sh "$@"
status=$?
{ echo "bundle: $BUNDLE"; grep -E '^(target|data|inception):' "$(dirname "$BUNDLE")/MANIFEST.txt"; } >> "$OUT/machine.txt"
exit $status
