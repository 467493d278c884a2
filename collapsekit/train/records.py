"""Typed results of the training loop: one optimiser step, one ``metrics.jsonl`` row.

Names are the glossary's (:mod:`collapsekit.glossary`). A row's JSON keys are its field names; the
fields of a monitored space are nested, and written flat as ``"{space}/{name}"`` (the glossary's
layer-qualified keys, e.g. ``backbone/effective_rank_lambda``), which are also the TensorBoard tags.
Rows written by earlier versions (``effective_rank_eigenvalues``, ``proj_mean_cosine``, ``top1``,
``batch_top1`` …) load through :func:`~collapsekit.glossary.canonical_key`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from collapsekit.diagnostics.health import HealthVerdict, health_verdict
from collapsekit.errors import InputError
from collapsekit.glossary import canonical_key
from collapsekit.monitoring import MonitorResult, SpaceMetrics

__all__ = ["StepResult", "SpaceRecord", "MetricsRecord", "read_metrics"]


@dataclass(frozen=True)
class StepResult:
    """One optimiser step, averaged over ranks.

    Attributes:
        step: the step just taken (1-based).
        epoch: its epoch (0-based).
        loss: ``loss_global + λ · loss_local``.
        loss_global: the global InfoNCE.
        loss_local: the local InfoNCE (``None`` without the local branch).
        top1_queue: fraction of queries whose positive key beats every queue key.
        top1_in_batch: fraction of queries whose own key beats the batch's other keys.
        lr: the learning rate the step used.
    """

    step: int
    epoch: int
    loss: float
    loss_global: float
    loss_local: float | None
    top1_queue: float
    top1_in_batch: float
    lr: float


@dataclass(frozen=True)
class SpaceRecord:
    """The monitor's numbers for one space (``backbone`` or ``projector``) of the monitor slices,
    rows L2-normalised (see :class:`~collapsekit.monitoring.SpaceMetrics`)."""

    effective_rank_lambda: float
    effective_rank_sigma: float
    rankme: float
    alpha: float
    alpha_r2: float
    std_l2: float
    mean_cosine: float
    rank_bound: int

    @classmethod
    def of(cls, space: SpaceMetrics) -> SpaceRecord:
        s = space.spectrum
        return cls(
            effective_rank_lambda=space.effective_rank_lambda,
            effective_rank_sigma=space.effective_rank_sigma,
            rankme=space.rankme,
            alpha=space.alpha,
            alpha_r2=s.alpha_r2,
            std_l2=space.std_l2,
            mean_cosine=space.mean_cosine,
            rank_bound=s.rank_bound,
        )


_SPACES = ("backbone", "projector")
# Unqualified monitor keys of earlier versions described the backbone.
_SPACE_NAMES = frozenset(f.name for f in fields(SpaceRecord))


@dataclass(frozen=True)
class MetricsRecord:
    """One ``metrics.jsonl`` row: the training window that ends at ``step`` (means over its
    steps), the monitor's spaces when it ran at this step, and the run's health verdict.

    Attributes:
        epoch: 1-based epoch of ``step``.
        step: the last step of the window.
        steps: the number of steps averaged.
        loss, loss_global, loss_local, top1_queue, top1_in_batch: window means (glossary).
        lr: the learning rate after ``step``.
        loss_chance: ``ln(K + 1)``, the global loss of uniform logits.
        top1_in_batch_chance: ``1/B`` (per-rank batch).
        images_per_s: training throughput over the window.
        health: :func:`~collapsekit.diagnostics.health.health_verdict` of this row's signals.
        backbone, projector: the monitor's numbers (``None`` where it did not run).
    """

    epoch: int
    step: int
    steps: int
    loss: float
    loss_global: float
    loss_local: float | None
    top1_queue: float
    top1_in_batch: float
    lr: float
    loss_chance: float
    top1_in_batch_chance: float
    images_per_s: float
    health: str = "unknown"
    backbone: SpaceRecord | None = None
    projector: SpaceRecord | None = None

    def with_monitor(self, result: MonitorResult) -> MetricsRecord:
        """This row with the monitor's spaces, and the health verdict they allow."""
        row = replace(
            self,
            backbone=SpaceRecord.of(result["backbone"]),
            projector=SpaceRecord.of(result["projector"]),
        )
        return row.judged()

    def judged(self) -> MetricsRecord:
        """This row with :attr:`health` recomputed from its own signals."""
        return replace(self, health=self.verdict().health.value)

    def verdict(self) -> HealthVerdict:
        """:func:`~collapsekit.diagnostics.health.health_verdict` of this row's signals: the
        window's ``loss_global`` and ``top1_in_batch``, the projector's when monitored."""
        k = round(math.exp(self.loss_chance) - 1)
        chance = self.top1_in_batch_chance
        b = round(1 / chance) if math.isfinite(chance) and chance > 0 else None
        p = self.projector
        return health_verdict(
            loss_global=self.loss_global,
            queue_size=k,
            top1_in_batch=self.top1_in_batch if b is not None else None,
            batch_size=b,
            mean_cosine=p.mean_cosine if p else None,
            effective_rank_lambda=p.effective_rank_lambda if p else None,
        )

    def get(self, key: str) -> float | None:
        """The value of a (flat, possibly legacy) key, e.g. ``"backbone/effective_rank_lambda"``."""
        value = self.to_dict().get(canonical_key(key))
        return None if value is None or isinstance(value, str) else float(value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: scalar fields by name, then ``"{space}/{name}"`` for each space."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SPACES:
                if value is not None:
                    out.update(
                        {f"{f.name}/{k.name}": getattr(value, k.name) for k in fields(value)}
                    )
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricsRecord:
        """A row from :meth:`to_dict` output, or a row of an earlier version (keys mapped)."""
        flat: dict[str, Any] = {}
        for key, value in data.items():
            new = canonical_key(key)
            if new in _SPACE_NAMES:  # earlier versions: unqualified monitor keys were the backbone
                new = f"backbone/{new}"
            flat[new] = value
        spaces: dict[str, Any] = {s: _space(flat, s) for s in _SPACES}
        scalars = {
            f.name: flat[f.name] for f in fields(cls) if f.name not in _SPACES and f.name in flat
        }
        scalars.setdefault("steps", 1)
        scalars.setdefault("health", "unknown")
        scalars.setdefault("loss_local", None)
        # rows written before the in-batch top-1 existed (issue 19): not measured
        scalars.setdefault("top1_in_batch", math.nan)
        scalars.setdefault("top1_in_batch_chance", math.nan)
        try:
            return cls(**scalars, **spaces)
        except TypeError as e:
            raise InputError(f"not a metrics.jsonl row: {e}") from None


def _space(flat: dict[str, Any], space: str) -> SpaceRecord | None:
    values: dict[str, Any] = {k.name: flat.get(f"{space}/{k.name}") for k in fields(SpaceRecord)}
    if values["effective_rank_lambda"] is None:
        return None
    nan = float("nan")
    values = {k: (nan if v is None and k != "rank_bound" else v) for k, v in values.items()}
    values["rank_bound"] = int(values["rank_bound"] or 0)
    return SpaceRecord(**values)


def read_metrics(path: str | Path) -> list[MetricsRecord]:
    """The rows of a run's ``metrics.jsonl`` (this version's or an earlier one's).

    Raises:
        InputError: the file is missing or a line is not a row.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no metrics.jsonl at {path}")
    return list(_rows(path))


def _rows(path: Path) -> Iterator[MetricsRecord]:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                yield MetricsRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, InputError) as e:
                raise InputError(f"{path}:{i}: {e}") from None
