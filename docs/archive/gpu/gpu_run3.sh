#!/usr/bin/env bash
# Third device run (issues 12, 13): the gpu-marked tests (training step under autocast, ZCA in
# float32, CollapseMonitor with a CUDA model), the --format torchvision export loaded into the real
# torchvision ResNet-18, the monitor's cost on CUDA and on quiet CPU cores, the step benchmark
# against the plain MoCo step on 2 quiet CPU threads, and the data-scale benchmark on 16 cores.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"

# 1. GPU tests and the torchvision export check (GPU + 1 core), while the step benchmark runs.
(
  OMP_NUM_THREADS=1 timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/train/test_gpu.py tests/monitoring/test_monitor.py 2>&1 | tail -5 > "$OUT/gpu_tests.log"
  OMP_NUM_THREADS=1 timeout 90 python3 docs/archive/gpu/torchvision_export_check.py > "$OUT/torchvision_export.log" 2>&1
  OMP_NUM_THREADS=4 timeout 60 python3 benchmarks/monitor.py --device cuda --threads 4 --repeats 5 \
    --out "$OUT/monitor_cuda.json" > "$OUT/monitor_cuda.log" 2>&1
) &
GPU_JOB=$!
# 2. Monitor cost on quiet CPU cores (1 and 2 threads), beside the other lanes (16 cores).
timeout 80 python3 benchmarks/monitor.py --threads 1 2 --repeats 2 --out "$OUT/monitor_cpu.json" \
  > "$OUT/monitor_cpu.log" 2>&1 &
CPU_JOB=$!
# 3. Step time vs the plain MoCo step: 2 threads.
OMP_NUM_THREADS=2 timeout 180 python3 benchmarks/step_vs_reference.py --threads 2 --steps 15 \
  --variants all --out "$OUT/step_vs_reference_2threads.json" > "$OUT/step.log" 2>&1
wait $GPU_JOB $CPU_JOB
# 4. Scale: 100 volumes at 512^2 x 100 slices, all cores.
OMP_NUM_THREADS=1 timeout 290 python3 benchmarks/scale.py --volumes 100 --memory-volumes 50,100 \
  --out-dir /tmp/ck-scale --out "$OUT/scale.json" > "$OUT/scale.log" 2>&1
tail -n 4 "$OUT"/*.log
