"""Figures of the diagnostics: ``plot_*(result, ax=None) -> (fig, ax)``, shared by CLI and notebooks.

Plotting is separate from computing: every function takes result objects from
:mod:`collapsekit.diagnostics`, draws on ``ax`` (or a new figure) and returns ``(fig, ax)``. Nothing
here calls ``plt.show``; :func:`save_figure` writes and closes a figure, so the CLI works on a
headless (Agg) backend.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from collapsekit.diagnostics.similarity import SimilarityResult
from collapsekit.diagnostics.spectrum import SpectrumResult
from collapsekit.glossary import label as quantity_label
from collapsekit.serialization import atomic_write

__all__ = [
    "plot_spectrum",
    "plot_similarity",
    "plot_rank_history",
    "plot_ablation_dice",
    "save_figure",
]

_STYLE = "whitegrid"
_PALETTE = "colorblind"
_NOISE_DECADES = 13.0


def _as_list(results: Any, kind: type) -> list[Any]:
    items = [results] if isinstance(results, kind) else list(results)
    if not items or not all(isinstance(r, kind) for r in items):
        raise TypeError(f"expected a {kind.__name__} or a non-empty sequence of them")
    return items


def _figure(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.get_figure()
        assert isinstance(fig, Figure)
        return fig, ax
    with sns.axes_style(_STYLE):
        fig, new_ax = plt.subplots(figsize=size, layout="constrained")
    return fig, new_ax


def plot_spectrum(
    results: SpectrumResult | Sequence[SpectrumResult],
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """Log10 of the covariance singular values against their index, one line per result.

    Collapse shows as a tail that drops steeply (Jing et al. 2022, Fig. 2). Zero values (beyond
    the rank, e.g. ``D > N - 1``) are left out of the line, and the y-axis stops 13 decades below
    the largest value (float64 rounding noise), so a collapsed tail drops off the axes. The legend gives each name with its
    effective rank (centred) and ``D``.

    Args:
        results: one :class:`SpectrumResult` or several (same or different ``D``).
        ax: axes to draw on; a new figure when None.
        title: axes title; a default names what is plotted.

    Returns:
        ``(fig, ax)``.
    """
    items = _as_list(results, SpectrumResult)
    fig, ax = _figure(ax, (7.0, 4.5))
    colors = sns.color_palette(_PALETTE, n_colors=max(len(items), 3))
    top, bottom = -np.inf, np.inf
    for res, color in zip(items, colors, strict=False):
        s = np.asarray(res.spectrum, dtype=np.float64)
        idx = np.arange(1, len(s) + 1)
        positive = s > 0
        log_s = np.where(positive, np.log10(np.where(positive, s, 1.0)), np.nan)
        if positive.any():
            top = max(top, float(np.nanmax(log_s)))
            bottom = min(bottom, float(np.nanmin(log_s)))
        label = (
            f"{res.name}  (eff. rank λ {res.effective_rank_eigenvalues:.1f}, "
            f"σ {res.effective_rank_centered:.1f} of D={res.d}"
            + (f", N-1={res.n - 1}" if res.bounded_by_samples else "")
            + ")"
        )
        ax.plot(idx, log_s, color=color, linewidth=1.8, label=label)
    ax.set_xlabel("singular value index (descending)")
    ax.set_ylabel("log$_{10}$ singular value of the covariance")
    normalized = {r.normalized for r in items}
    default = "Embedding covariance spectrum" + (
        " (rows L2-normalised)" if normalized == {True} else ""
    )
    ax.set_title(default if title is None else title)
    ax.set_xlim(0, max(len(r.spectrum) for r in items) + 1)
    if np.isfinite(top):
        # Below ~1e-13 of the largest value a float64 covariance holds only rounding noise: let a
        # collapsed tail fall off the axes instead of squeezing the informative range.
        ax.set_ylim(max(bottom, top - _NOISE_DECADES) - 0.5, top + 0.5)
    ax.legend(loc="best", fontsize="small", frameon=True)
    return fig, ax


def plot_similarity(
    results: SimilarityResult | Sequence[SimilarityResult],
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """Density histograms of pairwise cosine similarity, one colour per result.

    With a same/different-volume split, the two parts are drawn dashed (same volume) and dotted
    (different volume) in the result's colour, over the filled histogram of all pairs; the legend
    gives each mean. Identical slices pile up at 1, isotropic embeddings around 0.

    Args:
        results: one :class:`SimilarityResult` or several (e.g. embeddings and pixels).
        ax: axes to draw on; a new figure when None.
        title: axes title; default "Pairwise cosine similarity".

    Returns:
        ``(fig, ax)``.
    """
    items = _as_list(results, SimilarityResult)
    fig, ax = _figure(ax, (7.0, 4.5))
    colors = sns.color_palette("tab10", n_colors=max(len(items), 3))
    lo = 1.0
    for res, color in zip(items, colors, strict=False):
        _, edges = res.histogram
        ax.stairs(
            res.density(),
            edges,
            fill=True,
            alpha=0.25,
            color=color,
            label=f"{res.name}: all pairs (mean {res.mean:.3f})",
        )
        ax.stairs(res.density(), edges, color=color, linewidth=1.2)
        for part, style, label in (
            (res.same_volume, "--", "same volume"),
            (res.different_volume, ":", "different volume"),
        ):
            if part is not None and len(items) <= 2:  # splits of many inputs would be unreadable
                ax.stairs(
                    part.density(),
                    part.histogram[1],
                    color=color,
                    linestyle=style,
                    linewidth=1.8,
                    label=f"{res.name}: {label} (mean {part.mean:.3f})",
                )
        counts, edges = res.histogram
        if counts.any():
            lo = min(lo, float(edges[np.flatnonzero(counts)[0]]))
    # Zoom on the occupied range: CT cosines often all sit in [0.8, 1].
    ax.set_xlim(max(-1.0, lo - 0.05), 1.0)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title("Pairwise cosine similarity" if title is None else title)
    ax.legend(loc="upper left", fontsize="small", frameon=True)
    return fig, ax


class MetricsRow(Protocol):
    """What :func:`plot_rank_history` reads of a metrics row
    (:class:`~collapsekit.train.records.MetricsRecord`)."""

    @property
    def step(self) -> int: ...

    def get(self, key: str) -> float | None: ...


class DiceSummary(Protocol):
    """What :func:`plot_ablation_dice` reads of a summary
    (:class:`~collapsekit.experiments.results.RunSummary`)."""

    @property
    def mean_dice(self) -> float | None: ...

    @property
    def dice(self) -> Mapping[str, float | None]: ...


class DiceMethod(Protocol):
    """What :func:`plot_ablation_dice` reads of a method's result
    (:class:`~collapsekit.experiments.results.MethodResult`)."""

    @property
    def label(self) -> str: ...

    @property
    def seeds(self) -> int: ...

    @property
    def mean(self) -> DiceSummary: ...

    @property
    def std(self) -> DiceSummary: ...


class HasMethods(Protocol):
    """An ablation's results (:class:`~collapsekit.experiments.results.AblationResults`)."""

    @property
    def methods(self) -> Sequence[Any]: ...


def plot_rank_history(
    histories: Mapping[str, Sequence[Sequence[MetricsRow]] | Sequence[MetricsRow]] | HasMethods,
    ax: Axes | None = None,
    *,
    key: str = "backbone/effective_rank_lambda",
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """A quantity of each training run's metrics rows (default: the backbone's λ-effective rank
    on the monitor slices) against the step.

    Args:
        histories: ``{name: rows}`` or ``{name: [rows of each seed]}`` (the first seed drawn
            thick, further seeds thin), or an ablation's results (each method by its label).
        key: the glossary key to draw (legacy spellings are mapped).
    """
    if not isinstance(histories, Mapping):
        histories = {m.label: list(m.history) for m in histories.methods if m.history}
    runs = {name: _seeds(h) for name, h in histories.items()}
    fig, ax = _figure(ax, (7.0, 4.2))
    colors = sns.color_palette(_PALETTE, max(len(runs), 1))
    for color, (name, seeds) in zip(colors, runs.items(), strict=False):
        for i, records in enumerate(seeds):
            points = [(r.step, v) for r in records if (v := r.get(key)) is not None]
            ax.plot(
                [x for x, _ in points],
                [y for _, y in points],
                marker="o",
                color=color,
                lw=2 if i == 0 else 0.8,
                label=name if i == 0 else None,
            )
    ax.set_xlabel("step")
    ax.set_ylabel(quantity_label(key))
    ax.set_title(title or f"{quantity_label(key)} during pretraining")
    if runs:
        ax.legend(fontsize=8)
    return fig, ax


def _seeds(h: Sequence[Sequence[MetricsRow]] | Sequence[MetricsRow]) -> list[Sequence[MetricsRow]]:
    """One run's rows as a list of seeds."""
    if h and not hasattr(h[0], "step"):
        return list(h)  # type: ignore[arg-type]
    return [h]  # type: ignore[list-item]


def plot_ablation_dice(
    results: Sequence[DiceMethod] | HasMethods,
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """Grouped bars of linear-probe Dice per organ, one bar per method (error bars over seeds).

    Args:
        results: the methods' results, or an ablation's results.
    """
    methods: Sequence[DiceMethod] = (
        results.methods if not isinstance(results, Sequence) else results  # type: ignore[union-attr]
    )
    organs = list(dict.fromkeys(o for m in methods for o in m.mean.dice))
    organs = [o for o in organs if any(m.mean.dice.get(o) is not None for m in methods)]
    fig, ax = _figure(ax, (max(8.0, 0.9 * (len(organs) + 1)), 4.5))
    labels = [*organs, "mean"]
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(labels))
    colors = sns.color_palette(_PALETTE, len(methods))
    for i, (m, color) in enumerate(zip(methods, colors, strict=True)):
        vals = [m.mean.dice.get(o) for o in organs] + [m.mean.mean_dice]
        errs = [m.std.dice.get(o) or 0.0 for o in organs] + [m.std.mean_dice or 0.0]
        heights = [100 * v if v is not None else 0.0 for v in vals]
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            heights,
            width,
            color=color,
            yerr=[100 * e for e in errs] if m.seeds > 1 else None,
            label=m.label,
            capsize=2,
        )
    ax.set_xticks(x, labels, rotation=35, ha="right")
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Linear-probe Dice per organ")
    ax.legend(fontsize=8, ncols=min(len(methods), 5))
    return fig, ax


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (parent folders created, tight bounding box); close it.

    Returns:
        The path written.
    """
    out = Path(path)
    try:
        # atomic: a full disk never leaves a torn image over a good one
        with atomic_write(out, "wb") as f:
            fig.savefig(f, dpi=dpi, bbox_inches="tight", format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out
