"""Embedding extraction speed: `extract_embeddings` (what `collapsekit spectrum` runs) against a bare
`model(x)` loop over the same, already-stacked tensors, in one run.

Target: extraction reaches at least 0.9x the bare loop's images/s (slicing, resizing and batching
cost less than 10%). Also times the whole `collapsekit spectrum random:resnet18` command (defaults:
phantom, 2048 slices) which must finish well under a minute on 2 cores.

    python benchmarks/extraction.py [--samples 1024] [--image-size 128] [--repeats 3] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from collapsekit.data import PhantomConfig, load_split
from collapsekit.evaluation import extract_embeddings
from collapsekit.evaluation.extract import select_slices, slice_tensor
from collapsekit.runs import load_model


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/extraction.json"))
    args = ap.parse_args()

    volumes = load_split(
        "phantom", split="all", phantom=PhantomConfig(cases=48, seed=1000, validation=0)
    )
    model = load_model("random:resnet18")
    index = select_slices(volumes, args.samples)
    batches = [
        slice_tensor(volumes, index[i : i + args.batch_size], args.image_size)
        for i in range(0, len(index), args.batch_size)
    ]

    def bare() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            for x in batches:
                model.backbone(x)
        return time.perf_counter() - t

    def ours() -> float:
        t = time.perf_counter()
        extract_embeddings(
            model,
            volumes,
            image_size=args.image_size,
            samples=args.samples,
            batch_size=args.batch_size,
        )
        return time.perf_counter() - t

    bare(), ours()  # warm-up
    t_bare, t_ours = [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits both
        t_bare.append(bare())
        t_ours.append(ours())
    n = len(index)
    res = {
        "samples": n,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "bare_images_per_s": n / statistics.median(t_bare),
        "extract_images_per_s": n / statistics.median(t_ours),
    }
    res["ratio_extract_to_bare"] = res["extract_images_per_s"] / res["bare_images_per_s"]
    res["target_ratio"] = 0.9
    res["meets_target"] = res["ratio_extract_to_bare"] >= 0.9
    if not args.skip_cli:
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "collapsekit",
                "spectrum",
                "random:resnet18",
                "--quiet",
                "--out",
                str(args.out.parent / "extraction_cli"),
            ],
            check=True,
            capture_output=True,
        )
        res["cli_spectrum_random_resnet18_seconds"] = time.perf_counter() - t
    print(f"bare model(x):  {res['bare_images_per_s']:.1f} img/s")
    print(f"extract:        {res['extract_images_per_s']:.1f} img/s")
    print(f"ratio:          {res['ratio_extract_to_bare']:.2f}x (target >= 0.9)")
    if "cli_spectrum_random_resnet18_seconds" in res:
        print(
            f"`collapsekit spectrum random:resnet18` wall time: {res['cli_spectrum_random_resnet18_seconds']:.1f} s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
