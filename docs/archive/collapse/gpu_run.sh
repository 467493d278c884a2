#!/usr/bin/env bash
# The device run behind the README's GPU numbers (issue 10 demo ablation on a GPU, issue 13 GPU
# path). Run from the repository root on a CUDA machine with torch installed; wheels of monai,
# nibabel and tomli-w in .whl/ when the machine has no package index. Writes under $OUT (default
# ./gpu-out): gpu.json, the gpu-test log, and ablation.tar.gz (results, reports, figures, metrics;
# no checkpoints).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi -L
python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__, torch.cuda.get_device_name())"

# 1. GPU benchmark on a quiet GPU first (MoCo steps per method at 224 px batch 256 bf16, ZCA eigh vs NS)
timeout 150 python3 benchmarks/gpu.py --deadline-s 110 --out "$OUT/gpu.json" 2>&1 | tail -40

# 2. the gpu-marked tests (CUDA/autocast paths that CI never runs)
timeout 90 python3 -m pytest -q -m gpu tests/train/test_gpu.py -p no:cacheprovider 2>&1 | tail -5 | tee "$OUT/gpu_tests.log"

# 3. the demo ablation: every method x 3 seeds, one process per method, in parallel; then two
#    variant ablations (ZCA placement in the last block; local features from layer4 with
#    same-image negatives), 1 seed each.
D=/tmp/abl
mkdir -p $D/logs
run() { timeout "$1" python3 -m collapsekit ablate --budget demo --device cuda --quiet --out "$2" --methods "$3" --seeds "$4"; }
for m in mocov2 local zca local+zca; do
  run 330 $D/demo "$m" 3 > "$D/logs/$m.log" 2>&1 &
done
python3 - > $D/logs/variants.log 2>&1 <<'EOF' &
from collapsekit.experiments.ablation import AblationConfig, run_ablation
run_ablation(AblationConfig(methods=("zca", "local+zca"), seeds=1, device="cuda",
                            overrides={"zca_placement": "block", "zca_group_size": 16}),
             "/tmp/abl/zca_block")
run_ablation(AblationConfig(methods=("local",), seeds=1, device="cuda",
                            overrides={"local_layer": "layer4", "local_same_image_negatives": True}),
             "/tmp/abl/local_layer4_samenegs")
EOF
wait
tail -n 3 $D/logs/*.log
# The four method processes' runs are aggregated afterwards (anywhere, CPU is fine): re-running
# `collapsekit ablate --out DIR --methods mocov2,local,zca,local+zca --seeds 3` reuses every eval.json.
tar -czf "$OUT/ablation.tar.gz" --exclude='*.pt' -C /tmp abl
for f in $D/demo/*/seed*/metrics.jsonl; do echo "$f"; tail -n 1 "$f" | cut -c1-400; done
ls -la "$OUT"
