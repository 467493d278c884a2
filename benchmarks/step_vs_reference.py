"""collapsekit's MoCo steps against a plain eager MoCo v2 step written by hand, same backbone/batch.

Issue 13, "Faster than a plain implementation". The reference is the facebookresearch/moco recipe
(``moco/builder.py`` + ``main_moco.py``) in plain eager PyTorch: ``encoder_q`` = backbone + MoCo v2
MLP, ``encoder_k`` = ``deepcopy(encoder_q)`` without gradients, the momentum update of the key
encoder *before* the key forward, a ``(128, K)`` queue, ``logits = [q·k⁺ | q·queue] / T`` with label
0, cross-entropy, enqueue, SGD (lr 0.03·B/256, momentum 0.9, wd 1e-4). No shuffle-BN (the official
code needs DDP for it; a single-process user drops it). Both sides use collapsekit's backbone
builder (MONAI ResNet-18, 1 channel, stride-2 stem), so only the step differs.

Steps compared (every one: forward, ``zero_grad(set_to_none=True)``, backward, ``opt.step()``,
``float(loss)``):

* ``reference``: the plain step above (contiguous tensors, ``torch.optim.SGD`` defaults);
* ``mocov2``: ``collapsekit.models.MoCo`` with ``method="mocov2"`` (default config: split-BN
  shuffle emulation over 2 sub-batches);
* ``local+zca``: the paper's method (ZCA in layer4's last block, groups of 64, local grid 4×4,
  local queue 16384).

Each collapsekit step runs under one or more *variants*, i.e. values of the speed switches of
``TrainConfig`` (``channels_last``, ``fused_sgd``, ``fused_local_loss``), applied exactly as
``collapsekit train`` applies them (``MoCo(cfg, fused_local_loss=...)``,
``.to(memory_format=torch.channels_last)``, ``SGD(..., fused=...)``):

* ``default``: every switch on (what ``collapsekit train`` does);
* ``plain``: every switch off;
* ``no-channels_last``, ``no-fused_sgd``, ``no-fused_local_loss``: one switch off.

All runners are alternated round-robin in one process (A B C … A B C …, the start rotated every
round) so load drifts on a shared machine hit them alike; the JSON has every time, the medians,
``median(t) / median(t_ref)`` and the median of the per-round paired ratios. Targets (issue 13, on
CPU): ``mocov2`` ≤ 0.95× and ``local+zca`` ≤ 1.1× the plain step, judged on the ``default``
variant.

On a shared machine use ``--threads 1 --clock cpu``: the process's CPU time ignores the time other
jobs hold the cores (memory-bandwidth contention remains), so ratios stay meaningful under load.

Usage (the lead's quiet-machine command; ~1–2 s a step, 5 runners; ``--variants all`` adds the
one-switch-off sets)::

    python benchmarks/step_vs_reference.py --threads 2 --steps 15 --out OUT.json
    python benchmarks/step_vs_reference.py --threads 1 --clock cpu --steps 9 --variants all
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models import MoCo, ModelConfig, build_backbone

SWITCHES = ("channels_last", "fused_sgd", "fused_local_loss")
VARIANTS: dict[str, dict[str, bool]] = {
    "default": dict.fromkeys(SWITCHES, True),
    "plain": dict.fromkeys(SWITCHES, False),
    **{f"no-{k}": {s: s != k for s in SWITCHES} for k in SWITCHES},
}
TARGETS = {"mocov2": 0.95, "local+zca": 1.10}
SOURCE_SLICE = 256.0


class ReferenceMoCo(nn.Module):
    """MoCo v2 as in facebookresearch/moco ``moco/builder.py`` (single process, no shuffle-BN)."""

    def __init__(
        self,
        arch: str = "resnet18",
        dim: int = 128,
        K: int = 4096,  # noqa: N803 - the paper's name
        m: float = 0.999,
        T: float = 0.2,  # noqa: N803
    ) -> None:
        super().__init__()
        self.K, self.m, self.T = K, m, T
        backbone = build_backbone(arch, in_channels=1)
        width = backbone.out_channels
        # backbone(x) is the global-average-pooled (B, C) vector; then the MoCo v2 MLP
        self.encoder_q = nn.Sequential(
            backbone, nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim)
        )
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, K), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        for param_q, param_k in zip(
            self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True
        ):
            param_k.data = param_k.data * self.m + param_q.data * (1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.K % batch_size == 0
        self.queue[:, ptr : ptr + batch_size] = keys.T
        self.queue_ptr[0] = (ptr + batch_size) % self.K

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = F.normalize(self.encoder_k(im_k), dim=1)
        l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", [q, self.queue.clone().detach()])
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        self._dequeue_and_enqueue(k)
        return logits, labels


def make_batch(b: int, size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random views with crop geometry (boxes of 40–100 % of a 256-px slice) and flips."""
    boxes = []
    for _ in range(2):
        s = SOURCE_SLICE * (0.4 + 0.6 * torch.rand(b, generator=g))
        y0 = (SOURCE_SLICE - s) * torch.rand(b, generator=g)
        x0 = (SOURCE_SLICE - s) * torch.rand(b, generator=g)
        boxes.append(torch.stack([y0, x0, y0 + s, x0 + s], dim=1))
    return {
        "view1": torch.rand(b, 1, size, size, generator=g),
        "view2": torch.rand(b, 1, size, size, generator=g),
        "box1": boxes[0],
        "box2": boxes[1],
        "flip1": torch.rand(b, generator=g) < 0.5,
        "flip2": torch.rand(b, generator=g) < 0.5,
    }


def build_reference(batch: dict[str, torch.Tensor], queue_size: int) -> Callable[[], float]:
    """One plain eager MoCo v2 step (the facebookresearch/moco recipe) as a closure."""
    torch.manual_seed(0)  # same initial weights for every runner
    ref = ReferenceMoCo(K=queue_size).train()
    n = batch["view1"].shape[0]
    params = [p for p in ref.encoder_q.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.03 * n / 256, momentum=0.9, weight_decay=1e-4)
    v1, v2 = batch["view1"], batch["view2"]

    def run() -> float:
        logits, labels = ref(v1, v2)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run


def build_collapsekit(
    method: str, switches: dict[str, bool], batch: dict[str, torch.Tensor], queue_size: int
) -> Callable[[], float]:
    """One collapsekit MoCo step with the speed switches applied as ``collapsekit train`` does."""
    torch.manual_seed(0)
    cfg = ModelConfig(method=method, queue_size=queue_size)
    fmt = torch.channels_last if switches["channels_last"] else torch.preserve_format
    model = MoCo(cfg, fused_local_loss=switches["fused_local_loss"]).to(memory_format=fmt).train()
    n = batch["view1"].shape[0]
    params = [p for p in model.encoder_q.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=0.03 * n / 256, momentum=0.9, weight_decay=1e-4, fused=switches["fused_sgd"]
    )

    def run() -> float:
        out = model(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach())

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/step_vs_reference.json"))
    ap.add_argument("--steps", type=int, default=15, help="timed rounds (each runs every runner)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--queue-size", type=int, default=4096)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (process_time), which ignores the "
        "time other processes hold the cores: use it with --threads 1 on a shared machine",
    )
    ap.add_argument(
        "--variants",
        default="default,plain",
        help=f"comma-separated switch sets for the collapsekit steps, of {', '.join(VARIANTS)}"
        " (or all)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if variants == ["all"]:
        variants = list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    batch = make_batch(args.batch, args.size, torch.Generator().manual_seed(0))

    runners: dict[tuple[str, str], Callable[[], float]] = {
        ("reference", "eager"): build_reference(batch, args.queue_size)
    }
    for variant in variants:
        for method in TARGETS:
            runners[(method, variant)] = build_collapsekit(
                method, VARIANTS[variant], batch, args.queue_size
            )
    warmup_s: dict[str, float] = {}
    for (step, variant), fn in runners.items():
        t0 = time.perf_counter()
        for _ in range(max(args.warmup, 1)):
            fn()
        warmup_s[f"{step} | {variant}"] = time.perf_counter() - t0

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    order = list(runners)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in order}
    losses: dict[tuple[str, str], float] = {}
    t_all = time.perf_counter()
    for r in range(args.steps):
        shift = r % len(order)
        for key in order[shift:] + order[:shift]:  # rotate the start each round
            t0 = clock()
            losses[key] = runners[key]()
            times[key].append(clock() - t0)
    timed_wall = time.perf_counter() - t_all

    base = ("reference", "eager")
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(k: tuple[str, str]) -> float:
        return statistics.median(a / b for a, b in zip(times[k], times[base], strict=True))

    rows = []
    for step, variant in order:
        k = (step, variant)
        rows.append(
            {
                "step": step,
                "variant": variant,
                "switches": VARIANTS.get(variant),
                "median_s": med[k],
                "min_s": min(times[k]),
                "all_s": times[k],
                "images_per_s": args.batch / med[k],
                "ratio_to_reference": med[k] / med[base],
                "paired_ratio_to_reference": paired(k),
                "last_loss": losses[k],
            }
        )
    targets: dict[str, Any] = {}
    if "default" in variants:
        for step, limit in TARGETS.items():
            k = (step, "default")
            targets[step] = {
                "limit": limit,
                "variant": "default",
                "switches": VARIANTS["default"],
                "ratio": med[k] / med[base],
                "paired_ratio": paired(k),
                "met": med[k] / med[base] <= limit,
                "met_paired": paired(k) <= limit,
            }
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {
            "batch": args.batch,
            "image_size": args.size,
            "steps": args.steps,
            "clock": args.clock,
            "warmup_rounds": max(args.warmup, 1),
            "variants": {v: VARIANTS[v] for v in variants},
            "model": {
                "arch": "resnet18",
                "queue_size": args.queue_size,
                "defaults": "collapsekit.models.ModelConfig() otherwise",
            },
            "reference": "facebookresearch/moco step, eager, contiguous, SGD defaults",
        },
        "rows": rows,
        "targets": targets,
        "warmup_s": warmup_s,
        "timed_wall_s": timed_wall,
    }

    print(
        f"MoCo step, resnet18, batch {args.batch}, {args.size} px, {torch.get_num_threads()} "
        f"threads, queue {args.queue_size}; {args.steps} alternated rounds, {args.clock} clock "
        "(median):"
    )
    print(
        f"  {'step':>10s} {'variant':>20s} {'median s':>9s} {'img/s':>7s} {'/ref':>6s} {'paired':>7s}"
    )
    for row in rows:
        print(
            f"  {row['step']:>10s} {row['variant']:>20s} {row['median_s']:9.3f} "
            f"{row['images_per_s']:7.1f} {row['ratio_to_reference']:6.3f} "
            f"{row['paired_ratio_to_reference']:7.3f}"
        )
    for step, t in targets.items():
        print(
            f"target {step} <= {t['limit']}x the plain step: {t['ratio']:.3f}x "
            f"(paired {t['paired_ratio']:.3f}x) -> {'met' if t['met'] else 'NOT met'}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
