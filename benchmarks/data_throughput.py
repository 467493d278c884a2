"""Data-loader throughput against what a MoCo step consumes: does data ever bottleneck training?

Writes phantom volumes to a temporary directory in the BTCV layout, then measures, in one run:

1. ``cold``: decoding and preprocessing the ``.nii.gz`` files (``load_split``) plus the first epoch
   of the pretraining DataLoader (``TwoViewTransform`` at 128 px, batch 32, 2 workers, shuffled,
   ``drop_last``, persistent workers), as slices per second.
2. ``cached``: the following epochs, which read the preprocessed volumes from memory.
3. ``model``: a ResNet-18 MoCo-like step on the same batches: query forward + backward (backbone
   and a 2-layer MLP projector, SGD step) and key forward under ``no_grad`` on the second view,
   as slices (pairs of views) per second.

The ratio ``cached loader / model`` must be at least 3: the loader then feeds three times what the
model consumes. Usage::

    python benchmarks/data_throughput.py --out benchmarks/results/data_throughput.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from collapsekit.data import (
    TwoViewTransform,
    clear_cache,
    load_split,
    pretrain_dataset,
    write_phantom_dataset,
)
from collapsekit.models.backbone import build_backbone


def _epoch(
    loader: torch.utils.data.DataLoader,
) -> tuple[float, int, dict[str, torch.Tensor] | None]:
    t0 = time.perf_counter()
    n, last = 0, None
    for batch in loader:
        n += batch["view1"].shape[0]
        last = batch
    return time.perf_counter() - t0, n, last


def _model_rate(batch: dict[str, torch.Tensor], steps: int) -> tuple[float, list[float]]:
    backbone = build_backbone("resnet18")
    width = backbone.out_channels
    query = nn.Sequential(
        backbone, nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, 128)
    )
    key = copy.deepcopy(query)
    for p in key.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(query.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    v1, v2 = batch["view1"], batch["view2"]

    def step() -> None:
        q = nn.functional.normalize(query(v1), dim=1)
        with torch.no_grad():
            for pk, pq in zip(key.parameters(), query.parameters(), strict=True):
                pk.mul_(0.999).add_(pq.detach(), alpha=0.001)
            k = nn.functional.normalize(key(v2), dim=1)
        logits = q @ k.T / 0.2  # in-batch negatives stand in for the queue: same cost class
        loss = nn.functional.cross_entropy(logits, torch.arange(q.shape[0]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return v1.shape[0] / statistics.median(times), times


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--size", type=int, default=256, help="phantom in-plane size (source slices)")
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--view-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3, help="1 cold + (epochs - 1) cached")
    ap.add_argument("--model-steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/data_throughput.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_phantom_dataset(
            Path(tmp) / "btcv", cases=args.cases, size=args.size, slices=args.slices, validation=0
        )
        t_write = time.perf_counter() - t0

        clear_cache()
        t0 = time.perf_counter()
        volumes = load_split("btcv", Path(tmp) / "btcv", split="all")
        t_decode = time.perf_counter() - t0

    ds = pretrain_dataset(volumes, TwoViewTransform(size=args.view_size))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    epochs = []
    last = None
    for _ in range(args.epochs):
        seconds, n, last = _epoch(loader)
        epochs.append({"seconds": seconds, "slices": n, "slices_per_s": n / seconds})
    assert last is not None, "no full batch: use more cases or a smaller batch"
    cold_rate = epochs[0]["slices"] / (t_decode + epochs[0]["seconds"])
    cached_rate = (
        statistics.median(e["slices_per_s"] for e in epochs[1:])
        if len(epochs) > 1
        else float("nan")
    )

    model_rate, step_times = _model_rate(last, args.model_steps)
    ratio = cached_rate / model_rate
    result = {
        "config": vars(args) | {"out": str(args.out)},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "dataset": {
            "volumes": len(volumes),
            "usable_slices": len(ds),
            "write_seconds": t_write,
            "decode_seconds": t_decode,
        },
        "loader": {
            "epochs": epochs,
            "cold_slices_per_s": cold_rate,
            "cached_slices_per_s": cached_rate,
        },
        "model": {"step_seconds": step_times, "slices_per_s": model_rate},
        "ratio_cached_loader_to_model": ratio,
        "ratio_cold_loader_to_model": cold_rate / model_rate,
        "target_ratio": 3.0,
        "meets_target": ratio >= 3.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"volumes {len(volumes)} ({args.size}x{args.size}x{args.slices}), usable slices {len(ds)}"
    )
    print(f"decode + preprocess: {t_decode:.2f} s ({len(volumes) / t_decode:.1f} volumes/s)")
    print(f"loader cold (decode + epoch 1): {cold_rate:8.1f} slices/s")
    print(f"loader cached (epochs 2..):     {cached_rate:8.1f} slices/s")
    print(f"ResNet-18 MoCo step (bs {args.batch}, {args.view_size} px): {model_rate:8.1f} slices/s")
    print(
        f"ratio cached loader / model: {ratio:.1f}x (target >= 3x) -> {'OK' if ratio >= 3 else 'BELOW TARGET'}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
