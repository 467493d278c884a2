"""Cost of one CollapseMonitor pass: the monitor ``collapsekit train`` runs (and users add to their
own loops), on a ResNet-18 backbone + MLP projector (MoCo v2 query encoder, random init) and a
held-out set of phantom slices, on the CPU at 1 and 2 intra-op threads.

Reports the median and minimum of ``--repeats`` passes (after one warm-up) of the whole
``measure()``, of its embedding forward alone (``embeddings()``) and of its diagnostics alone
(``diagnose()`` on those embeddings: two spectra, two pairwise-cosine summaries). On a shared
machine the minimum is the better estimate of the cost.

    python benchmarks/monitor.py [--samples 512] [--image-size 128] [--repeats 5] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from collapsekit.data import PhantomConfig, load_split
from collapsekit.models import ModelConfig
from collapsekit.models.builder import build_encoder
from collapsekit.train.monitor import encoder_monitor, monitor_images


def _ms(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--device", default="cpu", help="cpu | cuda (the model; slices stay on the CPU)"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/monitor.json"))
    args = ap.parse_args()

    volumes = load_split(
        "phantom", split="all", phantom=PhantomConfig(cases=16, seed=1000, validation=0)
    )
    images = monitor_images(volumes, args.samples, args.image_size)
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(method="mocov2", arch="resnet18")).to(args.device)
    monitor = encoder_monitor(encoder, images)
    runs = []
    load_before = os.getloadavg()
    for threads in args.threads:
        torch.set_num_threads(threads)
        total = _ms(monitor.measure, args.repeats)
        forward = _ms(monitor.embeddings, args.repeats)
        spaces = monitor.embeddings()
        diagnostics = _ms(lambda: monitor.diagnose(spaces), args.repeats)  # noqa: B023
        runs.append(
            {
                "threads": threads,
                "measure_ms": total,
                "embeddings_ms": forward,
                "diagnostics_ms": diagnostics,
                **{
                    f"{stat.__name__}_{key}_ms": stat(values)
                    for stat in (statistics.median, min)
                    for key, values in (
                        ("measure", total),
                        ("embeddings", forward),
                        ("diagnostics", diagnostics),
                    )
                },
            }
        )
        print(
            f"{threads} thread(s): monitor pass {statistics.median(total):.0f} ms (min "
            f"{min(total):.0f}) = forward {statistics.median(forward):.0f} ms (min "
            f"{min(forward):.0f}) + diagnostics {statistics.median(diagnostics):.0f} ms (min "
            f"{min(diagnostics):.0f}) for {len(images)} slices at {args.image_size} px"
        )
    res = {
        "benchmark": "CollapseMonitor.measure (backbone + projector spaces)",
        "samples": len(images),
        "image_size": args.image_size,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "model": "MoCo v2 query encoder: MONAI ResNet-18 (1 channel, stride-2 stem) + 2-layer MLP "
        "projector (512 -> 512 -> 128), random init",
        "batch_size": monitor.batch_size,
        "repeats": args.repeats,
        "runs": runs,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
        "note": "shared machine: other processes may compete for the cores (see the load "
        "average; above the core count the times are inflated)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
