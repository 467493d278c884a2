#!/usr/bin/env bash
# Issue 20's full fair test on ONE GPU (prepared; not run in the session that wrote it: no device
# was lent). Protocol and decision rule: docs/_drafts/fixes.md ("results/ablation — the fair test").
#
# Five arms x 3 seeds at 128 px, batch 256, the ct preset, 300 steps (budget fair128):
#   A: mocov2, local (same_image), zca (block), local+zca   -> $OUT/block
#   B: zca with the pre_projector placement (m = 128 per split, d = 32) -> $OUT/pre_projector
# Seeds are the outer loop, so a run cut short by the device limit still leaves every arm with
# the same number of finished seeds; `collapsekit ablate` resumes unfinished runs from their
# checkpoints (every 50 steps) when the script is started again.
#
# Device budget: <= 12 min in all. Measured references (DESIGN.md, H100, bf16, batch 256, 224 px,
# step only): mocov2 4,472 img/s, local+zca 2,539 img/s; at 128 px about 3x that, so 300 steps
# (76,800 images) are ~6-10 s of steps per run; the loader (CPU two-view transform, 12 workers)
# and the evaluation (spectra + 20-epoch probe) dominate. The whole script stops at LIMIT seconds
# (default 660) and writes what finished; rerun it to continue.
#
# Usage on the device: bash docs/archive/fair_test/gpu_full.sh "$OUT"   (OUT defaults to runs/fair128)
set -u
cd "$(dirname "$0")/../../.."
OUT=${1:-runs/fair128}
LIMIT=${LIMIT:-660}
PY=${PY:-python}
export PYTHONPATH=$PWD
start=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - start) )); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for seeds in 1 2 3; do
  for arm in block pre_projector; do
    if [ "$arm" = block ]; then methods=mocov2,local,zca,local+zca; else methods=zca; fi
    t=$(left); if [ "$t" -le 30 ]; then echo "=== time budget spent before $arm seeds=$seeds"; break 2; fi
    echo "=== $(date -u +%FT%TZ) $arm seeds=$seeds ($t s left)"
    timeout --signal=INT "$t" "$PY" -m collapsekit ablate --budget fair128 --methods "$methods" \
      --seeds "$seeds" --zca-placement "$arm" --out "$OUT/$arm" --device cuda --quiet
    echo "=== exit $? after $(( $(date +%s) - start )) s"
  done
done
for arm in block pre_projector; do
  [ -f "$OUT/$arm/results.json" ] && "$PY" docs/archive/fair_test/zca_rank.py "$OUT/$arm" || true
done
echo "=== total $(( $(date +%s) - start )) s"
