#!/usr/bin/env bash
# Second device run (issue 10): the ZCA methods with the measured default placement (ZCA in the
# last block, groups of 16), 3 seeds each, demo budget. The mocov2 and local runs of gpu_run.sh are
# unaffected by the placement and are aggregated with these afterwards.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
D=/tmp/abl2; mkdir -p $D/logs
for m in zca local+zca; do
  timeout 300 python3 -m collapsekit ablate --budget demo --device cuda --quiet --out $D/demo \
    --methods "$m" --seeds 3 > "$D/logs/$m.log" 2>&1 &
done
wait
tail -n 3 $D/logs/*.log
tar -czf "$OUT/ablation2.tar.gz" --exclude='*.pt' -C /tmp abl2
for f in $D/demo/*/seed*/metrics.jsonl; do echo "$f"; tail -n 1 "$f" | cut -c1-300; done
