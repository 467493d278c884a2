"""End-to-end training rate of ``collapsekit train`` against the step-only rate (issue 21).

For each configuration (arch × method × feed × compile mode) it measures, in one process:

1. **end to end** (skipped with ``--step-only``): :func:`collapsekit.train.loop.train` itself — the real ``collapsekit train``
   path: DataLoader, augmentation (by the loader workers, or on the device with
   ``device_augment = on``), copy, step, logging — with a progress callback that timestamps every
   step. The rate is ``batch × intervals / time`` over the steps after ``--warmup``, leaving out the
   interval that holds an epoch end (monitor pass, checkpoint, new loader iterator) and the
   ``--settle`` intervals after it; ``with_epoch_ends`` counts everything. The monitor only runs at
   epoch ends (``monitor_every = 0``), so it is off inside the measured intervals.
2. **step only**: the same model settings (``MoCo``, channels_last, fused SGD, bf16 autocast on
   CUDA, the compile mode) stepped on batches that were drawn from the same feed and made ready on
   the device beforehand, so no loading or augmentation is timed: forward, backward, SGD step and
   the same ``float(loss)`` synchronisations as the loop. Measured before and after the end-to-end
   run; the rate is the mean of the two (drift shows as their spread).

``ratio`` = end-to-end / step-only (target: ≥ 0.9 on one H100 at 224 px batch 256, ≥ 0.95 on two
CPU cores at 128 px batch 32). JSON (``--out``) is rewritten after every configuration, so a run cut
short keeps what it measured; a failing configuration is recorded with its error and the script
goes on.

Usage::

    # CPU (the default regime: phantom, 128 px, batch 32, ResNet-18)
    python benchmarks/end_to_end.py --device cpu --out /tmp/e2e_cpu.json
    # one GPU, cached 512² data written by benchmarks/scale.py (see benchmarks/gpu_run5.sh)
    python benchmarks/end_to_end.py --device cuda --archs resnet18,resnet50 \\
        --methods mocov2,local+zca --image-size 224 --batch 256 --workers 12 \\
        --dataset abdomenct1k --data-dir /tmp/ck-scale/abdomenct1k --cache-dir /tmp/ck-scale/cache
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from collapsekit.data import (
    TwoViewTransform,
)
from collapsekit.devices import resolve_device
from collapsekit.models import MoCo
from collapsekit.progress import ProgressEvent, TaskAdvanced
from collapsekit.train.config import TrainConfig, config_from_dict
from collapsekit.train.feed import compile_model, pretrain_feed
from collapsekit.train.loop import train
from collapsekit.train.sampling import EpochSampler
from collapsekit.train.split import load_training_volumes


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": device,
        "card": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    return info


class StepTimer:
    """Progress callback: the time of every finished training step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, event: ProgressEvent) -> None:
        if isinstance(event, TaskAdvanced) and event.task == "train" and "loss" in event.info:
            self.times.append(time.perf_counter())


def steady_rate(
    times: list[float], batch: int, warmup: int, boundaries: set[int], settle: int
) -> dict[str, Any]:
    """Images/s over the intervals between steps ``warmup`` .. end (step ``k`` ends at
    ``times[k - 1]``), leaving out the interval after each step in ``boundaries`` and the
    ``settle`` intervals after that one."""
    skip: set[int] = set()
    for b in boundaries:
        skip.update(range(b, b + 1 + settle))
    kept, total = [], 0.0
    for k in range(max(warmup, 1), len(times)):  # interval from step k to step k + 1
        dt = times[k] - times[k - 1]
        total += dt
        if k not in skip:
            kept.append(dt)
    n_all = len(times) - max(warmup, 1)
    return {
        "images_per_s": batch * len(kept) / sum(kept) if kept else None,
        "intervals": len(kept),
        "excluded_intervals": n_all - len(kept),
        "images_per_s_with_epoch_ends": batch * n_all / total if total > 0 else None,
    }


def end_to_end(cfg: TrainConfig, work: Path, warmup: int, settle: int) -> dict[str, Any]:
    timer = StepTimer()
    t0 = time.perf_counter()
    result = train(cfg, work / "run", overwrite=True, progress=timer)
    wall = time.perf_counter() - t0
    # epoch ends (the loader restarts there): the last metrics row of each epoch (rows are written
    # every log_every steps and close every epoch)
    rows = result.history
    boundaries = {int(a.step) for a, b in zip(rows, rows[1:], strict=False) if b.epoch != a.epoch}
    boundaries |= {int(rows[-1].step)} if rows else set()  # the run's end
    out = steady_rate(timer.times, cfg.batch_size, warmup, boundaries, settle)
    out.update(steps=len(timer.times), epoch_ends=sorted(boundaries), wall_s=wall)
    out["losses_finite"] = all(map(lambda v: v == v and abs(v) != float("inf"), result.losses))
    return out


def _transform(cfg: TrainConfig) -> TwoViewTransform:
    # as collapsekit.train.loop builds it (the preset with the set overrides)
    return TwoViewTransform(**cfg.augmentation())


def ready_batches(cfg: TrainConfig, device: torch.device, n: int) -> list[dict[str, Any]]:
    """``n`` batches of the run's feed, already prepared (augmented) on ``device``."""
    # the volumes collapsekit train trains on (the monitor's held-out volumes left out)
    vols, _ = load_training_volumes(cfg, None)
    feed = pretrain_feed(vols, _transform(cfg), cfg.seed, device, cfg.device_augment)
    sampler = EpochSampler(len(feed.dataset), cfg.batch_size, cfg.seed)
    loader = DataLoader(
        feed.dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=feed.collate,
    )
    batches: list[dict[str, Any]] = []
    epoch = 0
    while len(batches) < n:
        feed.dataset.epoch = epoch
        sampler.set_epoch(epoch)
        batches += [feed.prepare(b) for b in islice(loader, n - len(batches))]
        epoch += 1
    return batches


def step_only(
    cfg: TrainConfig, batches: list[dict[str, Any]], device: torch.device, warmup: int
) -> dict[str, Any]:
    """The training step alone on ready batches (the loop's settings; see the module doc)."""
    torch.manual_seed(cfg.seed)
    moco = MoCo(cfg.model, fused_local_loss=cfg.fused_local_loss).to(device)
    if cfg.channels_last:
        moco.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model = compile_model(moco, cfg.compile)
    model.train()
    params = [p for p in moco.encoder_q.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params,
        lr=cfg.base_lr,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
        fused=cfg.fused_sgd,
    )
    amp = cfg.amp and device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16

    def step(batch: dict[str, Any]) -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            out = model(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        # the loop's host reads of each step (loss, its parts, top-1): synchronisations alike
        top1 = (out.logits.detach().argmax(dim=1) == 0).float().mean()
        float(out.loss_global.detach()), float(top1)
        return float(out.loss.detach())

    for b in batches[:warmup]:
        step(b)
    times = []
    for b in batches[warmup:]:
        t0 = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "images_per_s": cfg.batch_size * len(times) / sum(times),
        "step_ms_median": 1e3 * med,
        "steps": len(times),
    }


def measure(cfg: TrainConfig, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    n = args.warmup + args.step_only_steps
    batches = ready_batches(cfg, device, n)
    before = step_only(cfg, batches, device, args.warmup)
    del batches
    if args.step_only:  # e.g. the compile modes: the step alone, once
        return {"step_only": {"images_per_s": before["images_per_s"], "before": before}}
    with tempfile.TemporaryDirectory(prefix="ck-e2e-") as work:
        e2e = end_to_end(cfg, Path(work), args.warmup, args.settle)
    batches = ready_batches(cfg, device, n)
    after = step_only(cfg, batches, device, args.warmup)
    del batches
    step_rate = (before["images_per_s"] + after["images_per_s"]) / 2
    return {
        "step_only": {"images_per_s": step_rate, "before": before, "after": after},
        "end_to_end": e2e,
        "ratio": e2e["images_per_s"] / step_rate if e2e["images_per_s"] else None,
    }


def build_config(
    args: argparse.Namespace, arch: str, method: str, feed: str, mode: str
) -> TrainConfig:
    data: dict[str, Any] = dict(
        dataset=args.dataset,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        image_size=args.image_size,
        batch_size=args.batch,
        steps=args.warmup + args.steps,
        num_workers=args.workers,
        device=args.device,
        device_augment=feed,
        compile=mode,
        monitor_samples=args.monitor_samples,
        final_samples=args.final_samples,
        phantom_cases=args.phantom_cases,
        phantom_size=args.phantom_size,
        phantom_slices=args.phantom_slices,
    )
    return config_from_dict(
        {k: v for k, v in data.items() if v is not None},
        model={"method": method, "arch": arch, "queue_size": args.queue_size},
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--archs", default="resnet18")
    ap.add_argument("--methods", default="mocov2,local+zca")
    ap.add_argument("--device-augment", default="off,on", help="feeds to compare (off, on)")
    ap.add_argument("--compile", default="off", help="compile modes (off, on, cudagraphs)")
    ap.add_argument("--image-size", type=int, default=None, help="default 224 on CUDA, 128 on CPU")
    ap.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    ap.add_argument("--steps", type=int, default=24, help="timed end-to-end steps")
    ap.add_argument("--step-only-steps", type=int, default=12, help="timed step-only steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--settle", type=int, default=1, help="intervals left out after an epoch end")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (config default)")
    ap.add_argument("--queue-size", type=int, default=1024)
    ap.add_argument("--monitor-samples", type=int, default=256)
    ap.add_argument(
        "--final-samples",
        type=int,
        default=None,
        help="the run's final spectrum (config default; 0: none, after the timed steps either way)",
    )
    ap.add_argument("--dataset", default="phantom")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--phantom-cases", type=int, default=None)
    ap.add_argument("--phantom-size", type=int, default=None)
    ap.add_argument("--phantom-slices", type=int, default=None)
    ap.add_argument("--step-only", action="store_true", help="time the step alone, once")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/end_to_end.json"))
    args = ap.parse_args(argv)
    device_name = resolve_device(args.device)
    args.device = device_name
    cuda = device_name == "cuda"
    args.image_size = args.image_size or (224 if cuda else 128)
    args.batch = args.batch or (256 if cuda else 32)
    device = torch.device(device_name)
    res: dict[str, Any] = {
        "config": vars(args).copy(),
        "machine": machine(device_name),
        "results": [],
    }
    res["config"]["out"] = str(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for arch in _csv(args.archs):
        for method in _csv(args.methods):
            for feed in _csv(args.device_augment):
                for mode in _csv(args.compile):
                    row: dict[str, Any] = {
                        "arch": arch,
                        "method": method,
                        "image_size": args.image_size,
                        "batch_size": args.batch,
                        "device_augment": feed,
                        "compile": mode,
                    }
                    t0 = time.perf_counter()
                    try:
                        cfg = build_config(args, arch, method, feed, mode)
                        row["workers"] = cfg.num_workers
                        row.update(measure(cfg, args, device))
                    except Exception as e:  # noqa: BLE001 - recorded, the next configuration runs
                        row["error"] = f"{type(e).__name__}: {e}"
                        row["traceback"] = traceback.format_exc(limit=4)
                    row["seconds"] = time.perf_counter() - t0
                    res["results"].append(row)
                    res["machine"]["loadavg_end"] = list(os.getloadavg())
                    args.out.write_text(json.dumps(res, indent=2))
                    _print_row(row)
    print(f"wrote {args.out}")


def _print_row(row: dict[str, Any]) -> None:
    name = f"{row['arch']} {row['method']} {row['image_size']}px b{row['batch_size']} " + (
        f"feed={row['device_augment']} compile={row['compile']}"
    )
    if "error" in row:
        print(f"{name}: FAILED {row['error']}")
        return
    s = row["step_only"]
    if "end_to_end" not in row:
        print(f"{name}: step-only {s['images_per_s']:.1f} img/s")
        return
    e = row["end_to_end"]
    print(
        f"{name}: step-only {s['images_per_s']:.1f} img/s (before {s['before']['images_per_s']:.1f}, "
        f"after {s['after']['images_per_s']:.1f}), end-to-end {e['images_per_s']:.1f} img/s "
        f"({e['intervals']} intervals; {e['images_per_s_with_epoch_ends']:.1f} with epoch ends): "
        f"ratio {row['ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
