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

* ``reference``: the plain step above;
* ``mocov2``: ``collapsekit.models.MoCo`` with ``method="mocov2"`` (default config: split-BN
  shuffle emulation over 2 sub-batches);
* ``local+zca``: the paper's method;
* ``mocov2-nosplit`` (``--nosplit``): ``mocov2`` with ``shuffle_bn_splits=1``, to show what the
  shuffle-BN emulation costs.

Variants applied from the outside to every step (collapsekit's code is not changed):

* ``eager``: contiguous tensors, ``torch.optim.SGD`` with its default implementation;
* ``foreach`` / ``fused``: ``SGD(foreach=True)`` / ``SGD(fused=True)``;
* ``channels_last``: model and input in ``torch.channels_last`` memory format;
* ``channels_last+fused``: both;
* ``compile`` (only with ``--compile``): ``torch.compile`` of both encoders' backbone
  ``forward_features`` (slow warm-up on a CPU).

All (step, variant) runners are alternated round-robin in one process (A B C … A B C …, the start
rotated every round) so load drifts on a shared machine hit them alike; medians and per-round
paired ratios are reported. Targets (issue 13, on CPU): ``mocov2`` ≤ 0.95× and ``local+zca`` ≤ 1.1×
the plain step.

Usage::

    python benchmarks/step_vs_reference.py --repeats 5 --out benchmarks/results/step_vs_reference.json
    python benchmarks/step_vs_reference.py --repeats 2 --variants eager,channels_last   # quicker
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models import MoCo, ModelConfig, build_backbone

VARIANTS = ("eager", "foreach", "fused", "channels_last", "channels_last+fused")
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


def _sgd(params: list[nn.Parameter], variant: str, batch: int) -> torch.optim.Optimizer:
    kw: dict[str, Any] = {"lr": 0.03 * batch / 256, "momentum": 0.9, "weight_decay": 1e-4}
    if variant == "foreach":
        kw["foreach"] = True
    elif variant.endswith("fused"):
        kw["fused"] = True
    return torch.optim.SGD(params, **kw)


def _compile_backbones(encoders: list[nn.Module]) -> None:
    for enc in encoders:
        for mod in enc.modules():
            if hasattr(mod, "forward_features"):
                mod.forward_features = torch.compile(mod.forward_features)  # type: ignore[method-assign]
                break


def build_runner(
    step: str, variant: str, batch: dict[str, torch.Tensor], queue_size: int
) -> Callable[[], float]:
    """A closure doing one training step of ``step`` under ``variant``; returns the loss."""
    torch.manual_seed(0)  # same initial weights for every runner
    cl = variant.startswith("channels_last")
    fmt = torch.channels_last if cl else torch.contiguous_format
    data = {k: (v.contiguous(memory_format=fmt) if v.dim() == 4 else v) for k, v in batch.items()}
    n = data["view1"].shape[0]
    if step == "reference":
        ref = ReferenceMoCo(K=queue_size).train()
        if cl:
            ref = ref.to(memory_format=torch.channels_last)
        if variant == "compile":
            _compile_backbones([ref.encoder_q, ref.encoder_k])
        opt = _sgd([p for p in ref.encoder_q.parameters() if p.requires_grad], variant, n)
        v1, v2 = data["view1"], data["view2"]

        def run_ref() -> float:
            logits, labels = ref(v1, v2)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

        return run_ref

    method, splits = {
        "mocov2": ("mocov2", None),
        "mocov2-nosplit": ("mocov2", 1),
        "local+zca": ("local+zca", None),
    }[step]
    kw: dict[str, Any] = {"method": method, "queue_size": queue_size}
    if splits is not None:
        kw["shuffle_bn_splits"] = splits
    model = MoCo(ModelConfig(**kw)).train()
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if variant == "compile":
        _compile_backbones([model.encoder_q, model.encoder_k])
    opt = _sgd([p for p in model.encoder_q.parameters() if p.requires_grad], variant, n)

    def run_ck() -> float:
        out = model(data)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach())

    return run_ck


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/step_vs_reference.json"))
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every runner)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queue-size", type=int, default=4096)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    ap.add_argument("--compile", action="store_true", help="also the torch.compile variant")
    ap.add_argument("--nosplit", action="store_true", help="also mocov2 with shuffle_bn_splits=1")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "eager" not in variants:
        variants.insert(0, "eager")
    if args.compile:
        variants.append("compile")
    steps = ["reference", "mocov2", "local+zca"] + (["mocov2-nosplit"] if args.nosplit else [])
    batch = make_batch(args.batch, args.size, torch.Generator().manual_seed(0))

    runners: dict[tuple[str, str], Callable[[], float]] = {}
    errors: dict[str, str] = {}
    warmup_s: dict[str, float] = {}
    for variant in variants:
        for step in steps:
            key = f"{step} | {variant}"
            try:
                fn = build_runner(step, variant, batch, args.queue_size)
                t0 = time.perf_counter()
                for _ in range(max(args.warmup, 1)):
                    fn()
                warmup_s[key] = time.perf_counter() - t0
                runners[(step, variant)] = fn
            except Exception as exc:  # noqa: BLE001 - e.g. a fused optimiser not on this build
                errors[key] = f"{type(exc).__name__}: {exc}"[:500]
                print(f"{key}: FAILED {errors[key][:200]}")
                traceback.print_exc(limit=2)
    order = list(runners)
    times: dict[tuple[str, str], list[float]] = {k: [] for k in order}
    losses: dict[tuple[str, str], float] = {}
    t_all = time.perf_counter()
    for r in range(args.repeats):
        shift = r % len(order)
        for key in order[shift:] + order[:shift]:  # rotate the start each round
            t0 = time.perf_counter()
            losses[key] = runners[key]()
            times[key].append(time.perf_counter() - t0)
    timed_wall = time.perf_counter() - t_all

    med = {k: statistics.median(v) for k, v in times.items()}
    base = ("reference", "eager")

    def paired(a: tuple[str, str], b: tuple[str, str]) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    rows = []
    for step, variant in order:
        k = (step, variant)
        row: dict[str, Any] = {
            "step": step,
            "variant": variant,
            "median_s": med[k],
            "min_s": min(times[k]),
            "all_s": times[k],
            "images_per_s": args.batch / med[k],
            "last_loss": losses[k],
        }
        if base in med:
            row["ratio_to_reference_eager"] = med[k] / med[base]
            row["paired_ratio_to_reference_eager"] = paired(k, base)
        if ("reference", variant) in med:
            row["ratio_to_reference_same_variant"] = med[k] / med[("reference", variant)]
        if (step, "eager") in med:
            row["ratio_to_own_eager"] = med[k] / med[(step, "eager")]
            row["paired_ratio_to_own_eager"] = paired(k, (step, "eager"))
        rows.append(row)

    # the fastest variant per step, and whether the targets are met with it
    best: dict[str, Any] = {}
    for step in steps:
        cand = {v: med[(step, v)] for v in variants if (step, v) in med}
        if cand:
            v = min(cand, key=cand.__getitem__)
            best[step] = {
                "variant": v,
                "median_s": cand[v],
                "ratio_to_own_eager": cand[v] / cand["eager"] if "eager" in cand else None,
            }
    targets = {}
    for step, limit in TARGETS.items():
        if (step, "eager") in med and base in med:
            now = med[(step, "eager")] / med[base]
            b = best.get(step, {})
            with_best = b["median_s"] / med[base] if b else None
            targets[step] = {
                "limit": limit,
                "eager_ratio": now,
                "eager_paired_ratio": paired((step, "eager"), base),
                "best_variant": b.get("variant"),
                "best_ratio_to_reference_eager": with_best,
                "met_eager": now <= limit,
                "met_with_best_variant": with_best is not None and with_best <= limit,
            }

    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {
            "arch": "resnet18",
            "batch": args.batch,
            "image_size": args.size,
            "queue_size": args.queue_size,
            "repeats": args.repeats,
            "warmup_rounds": max(args.warmup, 1),
            "variants": variants,
            "steps": steps,
            "backbone": "collapsekit.models.build_backbone('resnet18', in_channels=1) on both sides",
        },
        "rows": rows,
        "best_variant": best,
        "targets": targets,
        "errors": errors,
        "warmup_s": warmup_s,
        "timed_wall_s": timed_wall,
    }

    print(
        f"MoCo step, resnet18, batch {args.batch}, {args.size} px, {torch.get_num_threads()} "
        f"threads, queue {args.queue_size}; {args.repeats} alternated rounds (median):"
    )
    print(
        f"  {'step':>15s} {'variant':>20s} {'median s':>9s} {'img/s':>7s} "
        f"{'/ref eager':>10s} {'paired':>7s} {'/ref same':>9s} {'/own eager':>10s}"
    )
    for row in rows:

        def f(key: str, row: dict[str, Any] = row) -> str:
            v = row.get(key)
            return f"{v:.3f}" if isinstance(v, float) else "-"

        print(
            f"  {row['step']:>15s} {row['variant']:>20s} {row['median_s']:9.3f} "
            f"{row['images_per_s']:7.1f} {f('ratio_to_reference_eager'):>10s} "
            f"{f('paired_ratio_to_reference_eager'):>7s} {f('ratio_to_reference_same_variant'):>9s} "
            f"{f('ratio_to_own_eager'):>10s}"
        )
    print("fastest variant per step:")
    for step, b in best.items():
        r = b["ratio_to_own_eager"]
        print(
            f"  {step:>15s}: {b['variant']} ({b['median_s']:.3f} s"
            + (f", {r:.3f}x its eager time)" if r is not None else ")")
        )
    for step, t in targets.items():
        print(
            f"target {step} <= {t['limit']}x plain step: eager {t['eager_ratio']:.3f}x "
            f"(paired {t['eager_paired_ratio']:.3f}x) -> {'met' if t['met_eager'] else 'not met'}; "
            f"with {t['best_variant']} {t['best_ratio_to_reference_eager']:.3f}x -> "
            f"{'met' if t['met_with_best_variant'] else 'not met'}"
        )
    if errors:
        print(f"failed runners: {errors}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
