#!/usr/bin/env bash
# Fourth device run (issue 13): the step benchmark alone on quiet cores (the third run's timed out
# beside the other lanes), and why 16 preprocessing workers scale poorly (scaling_probe.py).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
(lscpu | grep -E "^CPU\(s\)|Thread|Core|Socket|Model name"; df -hT /tmp /dev/shm) > "$OUT/machine.txt" 2>&1
OMP_NUM_THREADS=2 timeout 150 python3 benchmarks/step_vs_reference.py --threads 2 --steps 8 \
  --warmup 1 --variants default,plain --out "$OUT/step_vs_reference_2threads.json" > "$OUT/step.log" 2>&1
OMP_NUM_THREADS=1 timeout 200 python3 docs/archive/gpu/scaling_probe.py --volumes 48 --out "$OUT/scaling.json" \
  > "$OUT/scaling.log" 2>&1
tail -n 12 "$OUT"/*.log "$OUT/machine.txt"
