#!/usr/bin/env bash
# Fifth device run (issue 21, "feed the GPU"), one H100/H200 + 16 cores, about 10 minutes:
#   1. scale:   benchmarks/scale.py --volumes 100 on all 16 cores (preprocessing vs the decode
#               limit; it also leaves the 512² AbdomenCT-1K-layout data and its disk cache in
#               /tmp/ck-scale, which stage 2 trains from);
#   2. e2e:     benchmarks/end_to_end.py, 224 px batch 256: ResNet-18 and ResNet-50 x mocov2 and
#               local+zca with the device feed (device_augment=on), and ResNet-18 with the CPU
#               loader feed (off) for comparison; step-only vs `collapsekit train` end to end;
#   3. compile: the step alone, ResNet-18 mocov2 and local+zca, eager vs torch.compile vs CUDA
#               graphs (compile=on / cudagraphs);
#   4. tests:   the gpu-marked tests of the device augmentation and of the compiled step.
# Each stage has its own timeout (scale 220 s, e2e 190 s, compile 120 s, tests 120 s) and the
# benchmarks write JSON after every configuration, so a cut stage keeps what it measured. One
# device command may run 10 minutes, so run it as two calls from the repository root, the second
# at once (the machine stays warm 30 s; stages 3-4 do not need stage 1's data):
#   run(command="STAGES='scale e2e' bash benchmarks/gpu_run5.sh", timeout_s=480)
#   run(command="STAGES='compile tests' bash benchmarks/gpu_run5.sh", timeout_s=280)
# about 11 minutes of device time with the start. Dependencies the device image lacks go as wheels
# in .whl/ (carry it), as in the earlier runs. At most 8 files under $OUT (the tool's limit).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
STAGES=${STAGES:-"scale e2e compile tests"}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nproc; lscpu | grep -E "^Model name|^Socket|^Thread"; df -hT /tmp | tail -1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  date -u
} > "$OUT/machine.txt" 2>&1
DATA=(--dataset abdomenct1k --data-dir /tmp/ck-scale/abdomenct1k --cache-dir /tmp/ck-scale/cache)
E2E=(--device cuda --image-size 224 --batch 256 --workers 12 --queue-size 1024 --monitor-samples 256)

for stage in $STAGES; do
  case $stage in
  scale)
    OMP_NUM_THREADS=1 timeout 220 python3 benchmarks/scale.py --volumes 100 --memory-volumes 100 \
      --out-dir /tmp/ck-scale --out "$OUT/scale.json" > "$OUT/scale.log" 2>&1 ;;
  e2e)
    # device feed for both archs and methods, then the CPU-loader feed for ResNet-18
    timeout 140 python3 benchmarks/end_to_end.py "${E2E[@]}" "${DATA[@]}" --archs resnet18,resnet50 \
      --methods mocov2,local+zca --device-augment on --steps 20 --step-only-steps 10 --warmup 3 \
      --out "$OUT/e2e.json" > "$OUT/e2e.log" 2>&1
    timeout 50 python3 benchmarks/end_to_end.py "${E2E[@]}" "${DATA[@]}" --archs resnet18 \
      --methods mocov2,local+zca --device-augment off --steps 20 --step-only-steps 10 --warmup 3 \
      --out "$OUT/e2e_loader.json" >> "$OUT/e2e.log" 2>&1 ;;
  compile)
    # the phantom (128² sources, views at 224 px): independent of stage 1's data
    timeout 120 python3 benchmarks/end_to_end.py "${E2E[@]}" --archs resnet18 \
      --methods mocov2,local+zca --device-augment on --compile off,cudagraphs,on --step-only \
      --step-only-steps 20 --warmup 5 --out "$OUT/compile.json" > "$OUT/compile.log" 2>&1 ;;
  tests)
    # the gpu-marked tests of the device augmentation and the compiled step (log beside compile's)
    timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/data/test_device_augment.py \
      tests/train/test_feed.py >> "$OUT/compile.log" 2>&1 ;;
  esac
done
tail -n 6 "$OUT"/*.log
