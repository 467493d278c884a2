"""Train-step benchmark: the four methods, the ZCA layer vs BatchNorm, eigh vs Newton–Schulz.

Three measurements, written to one JSON file and printed as ratios:

1. ``methods``: median wall time of one MoCo training step (forward + backward + SGD step) of
   ``mocov2``, ``local``, ``zca`` and ``local+zca`` at the default size (ResNet-18, batch 32,
   128 px). Methods are interleaved round-robin so machine load drifts hit all of them alike.
   Target: ``local+zca`` ≤ 1.25 × ``mocov2``.
2. ``zca_vs_bn``: forward + backward of the ZCA layer on the feature map it sees in the last
   block of ResNet-18 at 128 px, ``(32, 512, 4, 4)`` (512 samples per statistic), against
   ``BatchNorm2d`` on the same tensor, for several group sizes and both methods. Target ≤ 2×.
3. ``eigh_vs_ns``: one group of ``d ∈ {64, 128, 256, 512}`` channels, ``B = 256`` samples with a
   power-law spectrum (``λ_i ∝ 1/i``, like trained features), forward + backward time and the
   whiteness error ``max |cov(y) − I|`` of eigh and of Newton–Schulz at T = 5 and T = 20.

Usage::

    python benchmarks/train_step.py --repeats 5 --out benchmarks/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from collapsekit.models import METHODS, MoCo, ModelConfig, ZCAWhitening


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired_times(
    a: Callable[[], object], b: Callable[[], object], repeats: int, warmup: int = 2
) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` timed alternately (load drifts hit both alike)."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def _batch(b: int, size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random views with realistic crop geometry: boxes of 40–100 % of a 256-px slice."""
    side = 256.0
    boxes = []
    for _ in range(2):
        s = side * (0.4 + 0.6 * torch.rand(b, generator=g))
        y0 = (side - s) * torch.rand(b, generator=g)
        x0 = (side - s) * torch.rand(b, generator=g)
        boxes.append(torch.stack([y0, x0, y0 + s, x0 + s], dim=1))
    return {
        "view1": torch.rand(b, 1, size, size, generator=g),
        "view2": torch.rand(b, 1, size, size, generator=g),
        "box1": boxes[0],
        "box2": boxes[1],
        "flip1": torch.rand(b, generator=g) < 0.5,
        "flip2": torch.rand(b, generator=g) < 0.5,
    }


def bench_methods(arch: str, batch: int, size: int, repeats: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    runs = {}
    for method in METHODS:
        torch.manual_seed(0)
        model = MoCo(ModelConfig(arch=arch, method=method)).train()
        opt = torch.optim.SGD(
            [p for p in model.encoder_q.parameters() if p.requires_grad],
            lr=0.03 * batch / 256,
            momentum=0.9,
            weight_decay=1e-4,
        )
        runs[method] = (model, opt)
    data = [_batch(batch, size, g) for _ in range(2)]

    def step(method: str, i: int) -> tuple[float, float | None]:
        model, opt = runs[method]
        t0 = time.perf_counter()
        out = model(data[i % 2])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return time.perf_counter() - t0, out.local_valid_fraction

    times: dict[str, list[float]] = {m: [] for m in METHODS}
    valid: dict[str, float | None] = {}
    for m in METHODS:  # warm-up
        step(m, 0)
    for i in range(repeats):  # round robin
        for m in METHODS:
            t, v = step(m, i)
            times[m].append(t)
            valid[m] = v
    med = {m: statistics.median(t) for m, t in times.items()}
    best = {m: min(t) for m, t in times.items()}
    # per-round ratios: robust to load changes between rounds on a shared machine
    paired = {
        m: statistics.median(a / b for a, b in zip(times[m], times["mocov2"], strict=True))
        for m in METHODS
    }
    return {
        "arch": arch,
        "batch": batch,
        "image_size": size,
        "median_s": med,
        "images_per_s": {m: batch / s for m, s in med.items()},
        "all_s": times,
        "ratio_to_mocov2": {m: med[m] / med["mocov2"] for m in METHODS},
        "min_s": best,
        "ratio_of_min_to_mocov2": {m: best[m] / best["mocov2"] for m in METHODS},
        "paired_ratio_to_mocov2": paired,
        "local_valid_fraction": valid["local"],
        "target": "local+zca <= 1.25 x mocov2",
    }


def bench_zca_vs_bn(repeats: int) -> dict[str, object]:
    shape = (32, 512, 4, 4)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 0.5 + 0.2).requires_grad_()
    grad = torch.randn(shape, generator=g)

    def fwd_bwd(layer: nn.Module) -> Callable[[], object]:
        def run() -> None:
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x).backward(grad)

        return run

    bn = nn.BatchNorm2d(512).train()
    rows = []
    bn_times = []
    for d in (16, 32, 64, 128):
        for method, iters in (("eigh", 5), ("newton_schulz", 5)):
            layer = ZCAWhitening(512, group_size=d, method=method, ns_iters=iters).train()
            t_bn, t = _paired_times(fwd_bwd(bn), fwd_bwd(layer), repeats)
            bn_times.append(t_bn)
            with torch.no_grad():
                y = layer(x).transpose(0, 1).reshape(512 // d, d, -1).double()
                yc = y - y.mean(-1, keepdim=True)
                cov = yc @ yc.transpose(1, 2) / y.shape[-1]
                err = (cov - torch.eye(d, dtype=torch.float64)).abs().max().item()
            rows.append(
                {
                    "group_size": d,
                    "method": method,
                    "ns_iters": iters if method == "newton_schulz" else None,
                    "median_ms": 1e3 * t,
                    "bn_median_ms": 1e3 * t_bn,
                    "ratio_to_bn": t / t_bn,
                    "white_error": err,
                }
            )
    return {
        "shape": list(shape),
        "bn_median_ms": 1e3 * statistics.median(bn_times),
        "zca": rows,
        "target": "<= 2 x BN",
    }


def bench_eigh_vs_ns(repeats: int, samples: int = 256) -> dict[str, object]:
    rows = []
    for d in (64, 128, 256, 512):
        g = torch.Generator().manual_seed(d)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        scale = torch.arange(1, d + 1, dtype=torch.float64) ** -0.5  # λ_i ∝ 1/i
        x = ((torch.randn(samples, d, generator=g, dtype=torch.float64) * scale) @ q.T).float()
        x.requires_grad_()
        grad = torch.randn(samples, d, generator=g)
        for method, iters in (("eigh", 0), ("newton_schulz", 5), ("newton_schulz", 20)):
            layer = ZCAWhitening(d, group_size=d, method=method, ns_iters=max(iters, 1)).train()

            def run(
                layer: nn.Module = layer, x: torch.Tensor = x, grad: torch.Tensor = grad
            ) -> None:
                x.grad = None
                layer(x).backward(grad)

            t = _median_time(run, repeats)
            with torch.no_grad():
                y = layer(x).double()
                cov = torch.cov(y.T, correction=0)
                err = (cov - torch.eye(d, dtype=torch.float64)).abs().max().item()
                finite = bool(torch.isfinite(y).all())
            rows.append(
                {
                    "d": d,
                    "samples": samples,
                    "method": method if method == "eigh" else f"newton_schulz_T{iters}",
                    "median_ms": 1e3 * t,
                    "white_error": err,
                    "finite": finite,
                }
            )
    return {"spectrum": "power law 1/i", "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    ap.add_argument("--repeats", type=int, default=5, help="timed train steps per method")
    ap.add_argument("--layer-repeats", type=int, default=30, help="timed calls per layer case")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-methods", action="store_true", help="only the layer benchmarks")
    ap.add_argument("--skip-layers", action="store_true", help="only the train-step benchmark")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    result: dict[str, object] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    }
    if not args.skip_layers:
        zb = bench_zca_vs_bn(args.layer_repeats)
        result["zca_vs_bn"] = zb
        print(f"BatchNorm2d fwd+bwd on (32,512,4,4): {zb['bn_median_ms']:.2f} ms")
        for r in zb["zca"]:  # type: ignore[union-attr,attr-defined]
            print(
                f"  ZCA d={r['group_size']:4d} {r['method']:>13s}: {r['median_ms']:7.2f} ms "
                f"= {r['ratio_to_bn']:5.2f}x BN, white err {r['white_error']:.2e}"
            )
        en = bench_eigh_vs_ns(max(5, args.layer_repeats // 3))
        result["eigh_vs_ns"] = en
        print("eigh vs Newton-Schulz, one group, B=256 samples, fwd+bwd:")
        for r in en["rows"]:  # type: ignore[union-attr,attr-defined]
            print(
                f"  d={r['d']:4d} {r['method']:>18s}: {r['median_ms']:8.2f} ms, "
                f"max|cov(y)-I| = {r['white_error']:.2e}"
            )
    if not args.skip_methods:
        mb = bench_methods(args.arch, args.batch, args.size, args.repeats)
        result["methods"] = mb
        print(
            f"train step, {args.arch}, batch {args.batch}, {args.size} px (median of {args.repeats}):"
        )
        for m in METHODS:
            print(
                f"  {m:>10s}: {mb['median_s'][m]:6.3f} s "  # type: ignore[index]
                f"({mb['images_per_s'][m]:5.1f} img/s) = {mb['ratio_to_mocov2'][m]:.3f}x mocov2; "  # type: ignore[index]
                f"min {mb['min_s'][m]:.3f} s = {mb['ratio_of_min_to_mocov2'][m]:.3f}x; "  # type: ignore[index]
                f"paired per-round {mb['paired_ratio_to_mocov2'][m]:.3f}x"  # type: ignore[index]
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
