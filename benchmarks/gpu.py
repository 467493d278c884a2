"""GPU benchmark: MoCo steps of every method, the ZCA layer's eigh vs Newton–Schulz, GPU-hours.

One prepared script for a GPU machine (issue 13, "The GPU path"). It

1. optionally runs the ``gpu``-marked tests (``--run-tests``: ``python -m pytest -m gpu -q`` in a
   subprocess; pass / fail / skip counts from its JUnit XML);
2. times one MoCo training step (forward under bf16 autocast, backward, SGD momentum 0.9 step) of
   ResNet-18 and ResNet-50 at 224 px, batch 256, for ``mocov2``, ``local``, ``zca``, ``local+zca``:
   images/s, median step ms and peak GPU memory (``torch.cuda.max_memory_allocated``, reset per
   configuration). Batches are built on the device: random views, crop boxes ``(y0, x0, y1, x1)``
   of 40–100 % of a 512-px slice and random flips, as the local branch expects;
3. times the ZCA layer's forward + backward with ``eigh`` vs ``newton_schulz`` at the default
   grouping (group size 64) on ``(256, C)`` pooled vectors and ``(256, C, 7, 7)`` maps, C = 512
   (ResNet-18) and 2048 (ResNet-50), with ``torch.cuda.synchronize``, and their whiteness error;
4. extrapolates the paper budget's GPU-hours from the measured images/s:
   ``slices × epochs / images_per_s / 3600`` (one image = one slice = one two-view pair);
5. prints the card, the torch version and a table, and writes JSON (``--out``), rewritten after
   every measurement so a run cut short still leaves its results.

A failure in one configuration (e.g. out of memory) is recorded in the JSON and the script goes
on. Without CUDA (``--device auto`` on a CPU machine, or ``--device cpu``) it says no GPU was used
and runs the CPU fallback at ``--quick`` sizes (batch 8, 64 px, ResNet-18 only, 2 timed steps).

Usage::

    python benchmarks/gpu.py --run-tests                      # on the GPU machine (~5 min, H100)
    python benchmarks/gpu.py --quick --device cpu --out /tmp/gpu.json   # CPU fallback (seconds)
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from collapsekit.devices import DEVICES, resolve_device
from collapsekit.models import METHODS, MoCo, ModelConfig, ZCAWhitening

#: The paper's pretraining set: AbdomenCT-1K, ~1,000 volumes, about 200k axial slices.
PAPER_SLICES = 200_000
#: Fallback for the ``paper`` budget if collapsekit's ablation budgets cannot be imported.
PAPER_BUDGET_FALLBACK: dict[str, Any] = {
    "arch": "resnet50",
    "image_size": 224,
    "epochs": 200,
    "batch_size": 256,
    "queue_size": 65536,
}
SOURCE_SLICE = 512  # crop boxes are drawn from a slice of this side (AbdomenCT-1K is 512²)


def paper_budget() -> tuple[dict[str, Any], str]:
    """The ``paper`` ablation budget (epochs, arch, ...) and where it was read from."""
    for mod in (
        "collapsekit.experiments",
        "collapsekit.experiments.ablation",
        "collapsekit.ablation",
    ):
        try:
            budget = importlib.import_module(mod).BUDGETS["paper"]
            paper = budget.to_dict() if hasattr(budget, "to_dict") else dict(budget)
            return {k: paper.get(k, v) for k, v in PAPER_BUDGET_FALLBACK.items()}, f"{mod}.BUDGETS"
        except Exception:  # noqa: BLE001 - moved or renamed: use the copy above
            continue
    return dict(PAPER_BUDGET_FALLBACK), "benchmarks/gpu.py copy of the ablation 'paper' budget"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls, synchronised."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def _error(exc: BaseException) -> dict[str, str]:
    return {
        "error": f"{type(exc).__name__}: {exc}"[:2000],
        "traceback": traceback.format_exc()[-4000:],
    }


def make_batch(b: int, size: int, device: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A two-view batch built on ``device``: views in [0, 1], boxes (y0, x0, y1, x1), flips."""
    boxes = []
    for _ in range(2):
        s = SOURCE_SLICE * (0.4 + 0.6 * torch.rand(b, generator=g, device=device))
        y0 = (SOURCE_SLICE - s) * torch.rand(b, generator=g, device=device)
        x0 = (SOURCE_SLICE - s) * torch.rand(b, generator=g, device=device)
        boxes.append(torch.stack([y0, x0, y0 + s, x0 + s], dim=1))
    return {
        "view1": torch.rand(b, 1, size, size, generator=g, device=device),
        "view2": torch.rand(b, 1, size, size, generator=g, device=device),
        "box1": boxes[0],
        "box2": boxes[1],
        "flip1": torch.rand(b, generator=g, device=device) < 0.5,
        "flip2": torch.rand(b, generator=g, device=device) < 0.5,
    }


def bench_step(
    arch: str,
    method: str,
    *,
    batch: int,
    size: int,
    device: str,
    amp: bool,
    queue_size: int,
    zca_method: str,
    warmup: int,
    steps: int,
) -> dict[str, Any]:
    """One configuration's MoCo training step: images/s, median ms, peak memory."""
    row: dict[str, Any] = {
        "arch": arch,
        "method": method,
        "batch": batch,
        "image_size": size,
        "device": device,
        "amp": "bf16" if amp else None,
        "queue_size": queue_size,
        "zca_method": zca_method if method in ("zca", "local+zca") else None,
    }
    try:
        _free(device)
        _reset_peak(device)
        torch.manual_seed(0)
        t_build = time.perf_counter()
        cfg = ModelConfig(arch=arch, method=method, queue_size=queue_size, zca_method=zca_method)
        model = MoCo(cfg).to(device).train()
        opt = torch.optim.SGD(
            [p for p in model.encoder_q.parameters() if p.requires_grad],
            lr=0.03 * batch / 256,
            momentum=0.9,
            weight_decay=1e-4,
        )
        g = torch.Generator(device=device).manual_seed(0)
        data = [make_batch(batch, size, device, g) for _ in range(2)]
        row["build_s"] = time.perf_counter() - t_build
        counter = [0]
        losses: list[float] = []

        def step() -> None:
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                out = model(data[counter[0] % 2])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            counter[0] += 1
            losses.append(out.loss.detach())

        times = _timed(step, device, warmup, steps)
        med = statistics.median(times)
        loss_values = [float(x) for x in losses]
        row.update(
            {
                "ok": True,
                "warmup_steps": warmup,
                "timed_steps": steps,
                "step_ms": [1e3 * t for t in times],
                "median_step_ms": 1e3 * med,
                "min_step_ms": 1e3 * min(times),
                "images_per_s": batch / med,
                "peak_memory_mib": _peak_mib(device),
                "losses_finite": all(math.isfinite(v) for v in loss_values),
                "last_loss": loss_values[-1] if loss_values else None,
            }
        )
    except Exception as exc:  # noqa: BLE001 - record (OOM, unsupported op, ...) and go on
        row.update({"ok": False, **_error(exc), "peak_memory_mib": _peak_mib(device)})
    return row


def bench_zca(
    channels: int, shape: tuple[int, ...], method: str, device: str, warmup: int, repeats: int
) -> dict[str, Any]:
    """ZCA layer forward + backward (train mode, float32 input) and its whiteness error."""
    row: dict[str, Any] = {
        "channels": channels,
        "group_size": 64,
        "input_shape": list(shape),
        "method": method,
    }
    try:
        _free(device)
        _reset_peak(device)
        g = torch.Generator(device=device).manual_seed(1)
        layer = ZCAWhitening(channels, group_size=64, method=method).to(device).train()
        row["ns_iters"] = layer.ns_iters if method == "newton_schulz" else None
        # correlated input with a power-law spectrum, like trained features
        mix = torch.randn(channels, channels, generator=g, device=device) / channels**0.5
        scale = torch.arange(1, channels + 1, device=device, dtype=torch.float32) ** -0.5
        base = torch.randn(*shape, generator=g, device=device)
        x = torch.movedim(torch.movedim(base, 1, -1) * scale @ mix, -1, 1).contiguous()
        x = (x + 0.3).requires_grad_()
        grad = torch.randn(*shape, generator=g, device=device)

        def run() -> None:
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x).backward(grad)

        times = _timed(run, device, warmup, repeats)
        with torch.no_grad():
            y = layer(x).detach().double()
            y = torch.movedim(y, 1, -1).reshape(-1, channels).T  # C × m
            d = 64
            yg = y.reshape(channels // d, d, -1)
            yc = yg - yg.mean(-1, keepdim=True)
            cov = yc @ yc.transpose(1, 2) / yg.shape[-1]
            eye = torch.eye(d, dtype=torch.float64, device=device)
            err = (cov - eye).abs().max().item()
        row.update(
            {
                "ok": True,
                "repeats": repeats,
                "median_ms": 1e3 * statistics.median(times),
                "min_ms": 1e3 * min(times),
                "white_error": err,
                "finite": bool(torch.isfinite(y).all()),
                "peak_memory_mib": _peak_mib(device),
            }
        )
    except Exception as exc:  # noqa: BLE001
        row.update({"ok": False, **_error(exc)})
    return row


def run_gpu_tests(timeout_s: float) -> dict[str, Any]:
    """``python -m pytest -m gpu -q`` in a subprocess; counts from its JUnit XML."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={xml}"]  # fmt: skip
        t0 = time.perf_counter()
        command = " ".join(["python", *cmd[1:]])
        try:
            proc = subprocess.run(
                cmd, cwd=root, capture_output=True, text=True, timeout=max(timeout_s, 1.0)
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            return {
                "command": command,
                "ok": False,
                "error": f"timed out after {timeout_s:.0f} s",
                "output_tail": out[-3000:],
            }
        res: dict[str, Any] = {
            "command": command,
            "returncode": proc.returncode,
            "wall_s": time.perf_counter() - t0,
            "output_tail": (proc.stdout + proc.stderr)[-3000:],
        }
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if xml.exists():
            for suite in ET.parse(xml).getroot().iter("testsuite"):
                for key in counts:
                    counts[key] += int(suite.get(key, 0))
        counts["passed"] = (
            counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        )
        res.update(counts)
        # pytest exit 5 = nothing collected/selected; 0 = all selected passed or skipped
        res["ok"] = proc.returncode in (0, 5) and counts["failures"] == counts["errors"] == 0
        return res


def extrapolate(steps: list[dict[str, Any]], budget: dict[str, Any]) -> list[dict[str, Any]]:
    """GPU-hours of the paper budget, ``slices × epochs / images_per_s / 3600``, per row."""
    rows = []
    for r in steps:
        if not r.get("ok"):
            continue
        ips = r["images_per_s"]
        hours = PAPER_SLICES * budget["epochs"] / ips / 3600
        rows.append(
            {
                "arch": r["arch"],
                "method": r["method"],
                "batch": r["batch"],
                "image_size": r["image_size"],
                "images_per_s": ips,
                "slices": PAPER_SLICES,
                "epochs": budget["epochs"],
                "gpu_hours": hours,
                "device": r["device"],
                "matches_paper_budget": r["arch"] == budget["arch"]
                and r["image_size"] == budget["image_size"]
                and r["batch"] == budget["batch_size"],
            }
        )
    return rows


def _write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    ap.add_argument("--device", default="auto", choices=DEVICES)
    ap.add_argument("--quick", action="store_true", help="batch 8, 64 px, resnet18, 2 timed steps")
    ap.add_argument("--run-tests", action="store_true", help="also run pytest -m gpu")
    ap.add_argument("--archs", default=None, help="comma-separated (default resnet18,resnet50)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    ap.add_argument("--batch", type=int, default=None, help="default 256 (8 with --quick)")
    ap.add_argument("--size", type=int, default=None, help="default 224 (64 with --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="default 3 (1 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps; default 10 (2 --quick)")
    ap.add_argument("--queue-size", type=int, default=None, help="default 65536 (256 --quick)")
    ap.add_argument("--zca-method", default="eigh", help="ZCA method inside the steps")
    ap.add_argument("--zca-repeats", type=int, default=None, help="default 20 (3 with --quick)")
    ap.add_argument("--zca-warmup", type=int, default=3, help="untimed ZCA calls first")
    ap.add_argument("--no-amp", action="store_true", help="float32 steps (default bf16 on CUDA)")
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--skip-zca", action="store_true")
    ap.add_argument("--tests-timeout", type=float, default=240.0, help="seconds for pytest -m gpu")
    ap.add_argument(
        "--deadline-s",
        type=float,
        default=0.0,
        help="skip the remaining step configurations (recorded as skipped) after this many "
        "seconds of the script; 0 = no limit",
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (CPU fallback)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    cuda_available = torch.cuda.is_available()
    try:
        device = resolve_device(args.device)
    except Exception as exc:  # noqa: BLE001 - --device cuda without a GPU
        print(f"error: {exc}", file=sys.stderr)
        return 2
    notes: list[str] = []
    quick = args.quick
    if device == "cpu":
        if not cuda_available:
            notes.append("no CUDA device found: CPU fallback, no GPU numbers")
        else:
            notes.append("CUDA is available but --device cpu was asked for: CPU run")
        if not quick:
            notes.append("CPU run: switched to --quick sizes (the full sizes take hours on a CPU)")
            quick = True
        if args.threads:
            torch.set_num_threads(args.threads)
    archs = (args.archs or ("resnet18" if quick else "resnet18,resnet50")).split(",")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    batch = args.batch or (8 if quick else 256)
    size = args.size or (64 if quick else 224)
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    steps = args.steps or (2 if quick else 10)
    queue_size = args.queue_size or (256 if quick else 65536)
    zca_repeats = args.zca_repeats or (3 if quick else 20)
    amp = device == "cuda" and not args.no_amp
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    budget, budget_source = paper_budget()

    card = torch.cuda.get_device_name(0) if device == "cuda" else None
    result: dict[str, Any] = {
        "device": device,
        "card": card,
        "cuda_available": cuda_available,
        "quick": quick,
        "notes": notes,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda_available else None,
            "threads": torch.get_num_threads(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device == "cuda" else None,
            "total_memory_mib": (
                torch.cuda.get_device_properties(0).total_memory / 2**20
                if device == "cuda"
                else None
            ),
        },
        "settings": {
            "archs": archs,
            "methods": methods,
            "batch": batch,
            "image_size": size,
            "warmup_steps": warmup,
            "timed_steps": steps,
            "queue_size": queue_size,
            "amp": "bf16" if amp else None,
            "optimizer": "SGD(lr=0.03*B/256, momentum=0.9, weight_decay=1e-4)",
            "zca_method_in_steps": args.zca_method,
            "zca_warmup": args.zca_warmup,
            "zca_repeats": zca_repeats,
        },
        "paper_budget": {
            **budget,
            "slices": PAPER_SLICES,
            "source": budget_source,
            "slices_source": "AbdomenCT-1K, ~1,000 volumes, about 200k axial slices (issue 13)",
        },
        "steps": [],
        "zca": [],
        "extrapolation": [],
        "tests": None,
    }
    print(f"device: {device}" + (f" ({card})" if card else ""))
    print(
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.get_num_threads()} threads"
    )
    for n in notes:
        print(f"note: {n}")
    _write(result, args.out)

    if not args.skip_zca:
        shapes = [(512, (256, 512)), (512, (256, 512, 7, 7))]
        if not quick:
            shapes += [(2048, (256, 2048)), (2048, (256, 2048, 7, 7))]
        for channels, shape in shapes:
            for method in ("eigh", "newton_schulz"):
                row = bench_zca(
                    channels, shape, method, device, warmup=args.zca_warmup, repeats=zca_repeats
                )
                _free(device)  # the layer and tensors died with the call
                result["zca"].append(row)
                _write(result, args.out)
        print("\nZCA layer fwd+bwd, group size 64 (median ms; max|cov(y)-I| per group):")
        for row in result["zca"]:
            shape_s = "x".join(map(str, row["input_shape"]))
            if row["ok"]:
                print(
                    f"  {shape_s:>16s} {row['method']:>13s}: {row['median_ms']:8.2f} ms  "
                    f"white err {row['white_error']:.1e}"
                )
            else:
                print(f"  {shape_s:>16s} {row['method']:>13s}: FAILED {row['error'][:100]}")
        faster = {}
        for _, shape in shapes:
            ok = {
                r["method"]: r["median_ms"]
                for r in result["zca"]
                if r["ok"] and r["input_shape"] == list(shape)
            }
            if len(ok) == 2:
                key = "x".join(map(str, shape))
                faster[key] = {
                    "faster": min(ok, key=ok.__getitem__),
                    "eigh_over_newton_schulz": ok["eigh"] / ok["newton_schulz"],
                }
        result["zca_faster"] = faster
        for key, f in faster.items():
            print(f"  {key}: eigh / newton_schulz = {f['eigh_over_newton_schulz']:.2f}x")
        _write(result, args.out)

    if not args.skip_steps:
        print(
            f"\nMoCo step, batch {batch}, {size} px, {'bf16 autocast' if amp else 'float32'}, "
            f"{warmup} warm-up + {steps} timed steps (median):"
        )
        for arch in archs:
            for method in methods:
                elapsed = time.perf_counter() - t_start
                if args.deadline_s and elapsed > args.deadline_s:
                    row = {"arch": arch, "method": method, "device": device, "ok": False,
                           "skipped": True, "error": f"skipped: deadline {args.deadline_s:.0f} s "
                           f"passed ({elapsed:.0f} s)"}  # fmt: skip
                    result["steps"].append(row)
                    print(f"  {arch:>9s} {method:>10s}: SKIPPED (deadline)")
                    continue
                row = bench_step(
                    arch,
                    method,
                    batch=batch,
                    size=size,
                    device=device,
                    amp=amp,
                    queue_size=queue_size,
                    zca_method=args.zca_method,
                    warmup=warmup,
                    steps=steps,
                )
                _free(device)
                result["steps"].append(row)
                _write(result, args.out)
                if row["ok"]:
                    mem = row["peak_memory_mib"]
                    mem_s = f"{mem / 1024:6.2f} GiB" if mem is not None else "     n/a"
                    print(
                        f"  {arch:>9s} {method:>10s}: {row['images_per_s']:8.1f} img/s  "
                        f"{row['median_step_ms']:8.1f} ms  peak {mem_s}"
                    )
                else:
                    print(f"  {arch:>9s} {method:>10s}: FAILED {row['error'][:120]}")
        result["extrapolation"] = extrapolate(result["steps"], budget)
        print(
            f"\nPaper budget GPU-hours = {PAPER_SLICES:,} slices x {budget['epochs']} epochs "
            f"/ images_per_s / 3600 (epochs from {budget_source}; paper arch {budget['arch']}, "
            f"{budget['image_size']} px, batch {budget['batch_size']}):"
        )
        for e in result["extrapolation"]:
            tag = "" if e["matches_paper_budget"] else "  (not the paper's arch/size/batch)"
            unit = "GPU-h" if e["device"] == "cuda" else "CPU-h"
            print(f"  {e['arch']:>9s} {e['method']:>10s}: {e['gpu_hours']:9.1f} {unit}{tag}")
        if device != "cuda":
            print("  (CPU fallback: these are CPU-hours at toy sizes, not a GPU estimate)")
        _write(result, args.out)

    if args.run_tests:
        print("\nRunning pytest -m gpu ...")
        timeout = args.tests_timeout
        if args.deadline_s:
            left = args.deadline_s - (time.perf_counter() - t_start)
            timeout = max(30.0, min(timeout, left))
        result["tests"] = run_gpu_tests(timeout)
        t = result["tests"]
        if "tests" in t:
            print(
                f"  {t['passed']} passed, {t['failures']} failed, {t['errors']} errors, "
                f"{t['skipped']} skipped (exit {t['returncode']}, {t['wall_s']:.0f} s)"
            )
        else:
            print(f"  {t.get('error')}")

    result["wall_s"] = time.perf_counter() - t_start
    _write(result, args.out)
    print(f"\nwrote {args.out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
