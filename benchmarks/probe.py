"""Linear-probe epoch time with cached features vs re-encoding every epoch, and the cache's memory.

Same data, same seed, one run each: ``cache="memory"`` (features computed once, then each epoch
trains only the 1×1 conv) against ``cache="none"`` (every epoch re-encodes every slice with the
frozen backbone, as an augmented probe must). Data: the built-in phantom (BTCV label ids).

    .venv/bin/python benchmarks/probe.py --out benchmarks/results/probe.json

Target: cached epochs ≥ 5× faster than re-encoding at ResNet-18, 128 px.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from collapsekit.data import BTCV_LABELS, PhantomConfig, load_split
from collapsekit.evaluation.segmentation.probe import ProbeConfig, linear_probe
from collapsekit.models.backbone import build_backbone


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--output-stride", type=int, default=32)
    ap.add_argument("--cases", type=int, default=6, help="phantom cases (a third validation)")
    ap.add_argument("--slices", type=int, default=32, help="slices per phantom case")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/probe.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    phantom = PhantomConfig(
        cases=args.cases,
        size=args.image_size,
        slices=args.slices,
        seed=10_000,
        validation=max(1, args.cases // 3),
    )
    train = load_split("phantom", split="training", phantom=phantom)
    val = load_split("phantom", split="validation", phantom=phantom)
    torch.manual_seed(0)
    backbone = build_backbone(args.arch).eval()
    base = ProbeConfig(
        epochs=args.epochs,
        image_size=args.image_size,
        output_stride=args.output_stride,
        batch_size=args.batch_size,
    )
    runs = {}
    for mode in ("memory", "none"):
        rss0 = _max_rss_bytes()
        t0 = time.perf_counter()
        cfg = ProbeConfig(**{**base.__dict__, "cache": mode})
        r = linear_probe(backbone, train, val, BTCV_LABELS, cfg, device=args.device)
        total = time.perf_counter() - t0
        epochs = [h["seconds"] for h in r.history]
        runs[mode] = {
            "epoch_s": epochs,
            "epoch_s_median": float(np.median(epochs)),
            "encode_s": r.info["encode_s"],
            "train_s": r.info["train_s"],
            "predict_s": r.info["predict_s"],
            "total_s": total,
            "cache_bytes": r.info["cache_bytes"],
            "max_rss_growth_bytes": _max_rss_bytes() - rss0,
            "mean_dice": r.mean_dice,
            "final_loss": r.history[-1]["loss"],
        }
        print(
            f"cache={mode:6s}  epoch {runs[mode]['epoch_s_median']:.3f} s  "
            f"(one-time encode {r.info['encode_s']:.2f} s)  cache {r.info['cache_bytes'] / 2**20:.1f} MiB  "
            f"mean Dice {r.mean_dice:.4f}"
        )
    cached, uncached = runs["memory"], runs["none"]
    speedup = uncached["epoch_s_median"] / cached["epoch_s_median"]
    # Break-even: epochs after which encode-once + cheap epochs beats re-encoding.
    break_even = cached["encode_s"] / max(
        uncached["epoch_s_median"] - cached["epoch_s_median"], 1e-9
    )
    n_slices = r.info["train_slices"]
    result = {
        "benchmark": "probe_cache",
        "arch": args.arch,
        "image_size": args.image_size,
        "output_stride": args.output_stride,
        "train_slices": n_slices,
        "feature_shape": r.info["feature_shape"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "runs": runs,
        "epoch_speedup_cached_vs_reencode": speedup,
        "total_speedup": uncached["total_s"] / cached["total_s"],
        "break_even_epochs": break_even,
        "cache_bytes": cached["cache_bytes"],
        "cache_bytes_per_slice": cached["cache_bytes"] // max(n_slices, 1),
        "same_loss": bool(np.isclose(cached["final_loss"], uncached["final_loss"], rtol=1e-4)),
        "target_speedup": 5.0,
        "meets_target": speedup >= 5.0,
    }
    print(
        f"epoch speed-up cached vs re-encode: {speedup:.1f}x (target >= 5x); "
        f"whole probe {result['total_speedup']:.2f}x; break-even after {break_even:.2f} epochs; "
        f"cache {cached['cache_bytes']} bytes for {n_slices} slices "
        f"({result['cache_bytes_per_slice']} B/slice); same final loss: {result['same_loss']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
