"""Is a contrastive run learning? One verdict from the signals a run already logs.

Three verdicts (checked in this order):

* ``collapsed`` — *complete* collapse: the projector maps every input to nearly one point (mean
  pairwise cosine ≥ :data:`COLLAPSED_COSINE`, or effective rank (λ) < :data:`COLLAPSED_RANK`
  unless the in-batch top-1 passes its bound: a rank near 1 with inputs still told apart is
  extreme *dimensional* collapse — measured in healthy default runs early in training — and is
  listed among the reasons instead).
* ``not learning`` — the InfoNCE loss is still near the loss of uniform logits, ``ln(K + 1)``
  (``loss_global > NOT_LEARNING_LOSS · ln(K + 1)``), or the in-batch top-1 (the query's own key
  against the other keys of its batch) is below ``NOT_LEARNING_TOP1 × chance`` (chance ``1/B``).
* ``healthy`` — none of the above. *Dimensional* collapse (a low but > 1 effective rank) is not a
  failed run: it is what the diagnostics then measure.

Signals that are not given are not used; with none given the verdict is ``unknown``. The top-1
against the queue is deliberately not a signal: a failed run can score high on it through a
fresh-key shortcut (DESIGN.md, the phantom study).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from collapsekit.errors import InputError

__all__ = [
    "Health",
    "HealthVerdict",
    "health_verdict",
    "COLLAPSED_COSINE",
    "COLLAPSED_RANK",
    "NOT_LEARNING_LOSS",
    "NOT_LEARNING_TOP1",
]

COLLAPSED_COSINE = 0.95
"""Mean pairwise cosine of the projector output at or above which a run is completely collapsed."""
COLLAPSED_RANK = 1.5
"""Effective rank (λ) below which the embeddings are (numerically) one direction."""
NOT_LEARNING_LOSS = 0.9
"""``loss_global`` above this fraction of ``ln(K + 1)`` means the run is not learning."""
NOT_LEARNING_TOP1 = 2.0
"""In-batch top-1 below this multiple of chance (``1/B``) means the run is not learning."""


class Health(StrEnum):
    """The verdict of :func:`health_verdict`."""

    HEALTHY = "healthy"
    NOT_LEARNING = "not learning"
    COLLAPSED = "collapsed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class HealthVerdict:
    """A verdict and the reasons for it (one short clause per signal that decided it).

    Attributes:
        health: the verdict.
        reasons: e.g. ``("loss_global 6.80 > 0.9·ln(K+1) = 6.24",)``; the signals that passed
            for ``healthy``.
    """

    health: Health
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"{self.health.value} ({'; '.join(self.reasons)})"
            if self.reasons
            else self.health.value
        )

    def to_dict(self) -> dict[str, object]:
        return {"health": self.health.value, "reasons": list(self.reasons)}


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    if math.isnan(v):
        return None
    if math.isinf(v):
        raise InputError(f"health_verdict: {name} is {v}")
    return v


def health_verdict(
    *,
    loss_global: float | None = None,
    queue_size: int | None = None,
    top1_in_batch: float | None = None,
    batch_size: int | None = None,
    mean_cosine: float | None = None,
    effective_rank_lambda: float | None = None,
) -> HealthVerdict:
    """The health of a contrastive run from the signals given (see the module docstring).

    Args:
        loss_global: the global InfoNCE loss (needs ``queue_size``).
        queue_size: ``K``, the number of negatives; uniform logits give ``ln(K + 1)``.
        top1_in_batch: fraction of queries whose own key beats the other keys of the batch
            (needs ``batch_size``).
        batch_size: ``B``; chance in-batch top-1 is ``1/B``.
        mean_cosine: mean pairwise cosine of the projector output.
        effective_rank_lambda: effective rank (λ) of the projector output.

    Returns:
        The verdict with its reasons. NaN signals are treated as absent.

    Raises:
        InputError: a loss without ``queue_size`` (or top-1 without ``batch_size``), or an
            infinite signal.
    """
    loss = _finite("loss_global", loss_global)
    top1 = _finite("top1_in_batch", top1_in_batch)
    cos = _finite("mean_cosine", mean_cosine)
    rank = _finite("effective_rank_lambda", effective_rank_lambda)
    if loss is not None and (queue_size is None or queue_size < 1):
        raise InputError("health_verdict: loss_global needs queue_size (K >= 1)")
    if top1 is not None and (batch_size is None or batch_size < 2):
        raise InputError("health_verdict: top1_in_batch needs batch_size (B >= 2)")

    # A rank below COLLAPSED_RANK says the variation spans about one direction, not how large it
    # is: a line still tells inputs apart. An in-batch top-1 above the bound shows it does, so
    # the low rank is then (extreme) dimensional collapse, reported, not complete collapse.
    discriminates = (
        top1 is not None and batch_size is not None and top1 >= NOT_LEARNING_TOP1 / batch_size
    )
    collapsed = []
    if cos is not None and cos >= COLLAPSED_COSINE:
        collapsed.append(f"mean_cosine {cos:.3f} >= {COLLAPSED_COSINE}")
    if rank is not None and rank < COLLAPSED_RANK and not discriminates:
        collapsed.append(f"effective_rank_lambda {rank:.2f} < {COLLAPSED_RANK}")
    if collapsed:
        return HealthVerdict(Health.COLLAPSED, tuple(collapsed))

    failing: list[str] = []
    passing: list[str] = []
    if loss is not None:
        assert queue_size is not None
        bound = NOT_LEARNING_LOSS * math.log(queue_size + 1)
        clause = f"loss_global {loss:.2f} {{}} {NOT_LEARNING_LOSS}·ln(K+1) = {bound:.2f}"
        (failing if loss > bound else passing).append(clause.format(">" if loss > bound else "<="))
    if top1 is not None:
        assert batch_size is not None
        bound = NOT_LEARNING_TOP1 / batch_size
        clause = f"top1_in_batch {top1:.3f} {{}} {NOT_LEARNING_TOP1:g}/B = {bound:.3f}"
        (failing if top1 < bound else passing).append(clause.format("<" if top1 < bound else ">="))
    if rank is not None and rank < COLLAPSED_RANK:  # only here when the top-1 discriminates
        passing.append(
            f"effective_rank_lambda {rank:.2f} < {COLLAPSED_RANK}: about one direction, but "
            "the in-batch top-1 tells inputs apart"
        )
    if failing:
        return HealthVerdict(Health.NOT_LEARNING, tuple(failing))
    if loss is None and top1 is None:
        # Only the collapse signals were given and they passed: not collapsed, learning unknown.
        return HealthVerdict(Health.UNKNOWN, ("no loss or top-1 given",))
    return HealthVerdict(Health.HEALTHY, tuple(passing))
