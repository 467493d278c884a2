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
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from collapsekit.diagnostics.similarity import SimilarityResult
from collapsekit.diagnostics.spectrum import SpectrumResult
from collapsekit.errors import ConfigError
from collapsekit.glossary import label
from collapsekit.serialization import atomic_write

__all__ = [
    "FIGURE_FORMATS",
    "plot_spectrum",
    "plot_similarity",
    "plot_rank_history",
    "plot_ablation_dice",
    "save_figure",
]

FIGURE_FORMATS = ("png", "pdf", "svg")
"""Formats :func:`save_figure` writes (chosen by the file suffix; ``--format`` in the CLI)."""

# One style for every figure: matplotlib only (no seaborn theme), a colour-blind-safe cycle.
_STYLE: dict[str, Any] = {
    "axes.grid": True,
    "grid.color": "0.88",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "0.3",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": "medium",
    "legend.frameon": True,
    "legend.framealpha": 0.9,
    "savefig.dpi": 150,
}
_COLORS = plt.style.library["tableau-colorblind10"]["axes.prop_cycle"].by_key()["color"]
_NOISE_DECADES = 13.0


def _colors(n: int) -> list[str]:
    return [_COLORS[i % len(_COLORS)] for i in range(max(n, 1))]


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
    with plt.rc_context(_STYLE):  # type: ignore[arg-type]  # keys are valid rcParams
        fig, new_ax = plt.subplots(figsize=size, layout="constrained")
    return fig, new_ax


def plot_spectrum(
    results: SpectrumResult | Sequence[SpectrumResult],
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> tuple[Figure, Axes]:
    """Log10 of the covariance eigenvalues λ against their index, one line per result.

    Collapse shows as a tail that drops steeply (Jing et al. 2022, Fig. 2). Only the first
    ``min(D, N − 1)`` values are drawn — N centred samples have no more than ``N − 1`` nonzero
    eigenvalues, so the rest is rounding noise — and that bound is marked by a dashed line. Zero
    values are left out and the y-axis stops 13 decades below the largest value (float64 rounding
    noise). The legend gives each name with its effective rank (λ) and (σ), ``N`` and ``D``.

    Args:
        results: one :class:`SpectrumResult` or several (same or different ``D``).
        ax: axes to draw on; a new figure when None.
        title: axes title; a default names what is plotted.

    Returns:
        ``(fig, ax)``.
    """
    items = _as_list(results, SpectrumResult)
    fig, ax = _figure(ax, (7.0, 4.5))
    top, bottom = -np.inf, np.inf
    bounds: dict[int, str] = {}
    for res, color in zip(items, _colors(len(items)), strict=False):
        s = np.asarray(res.spectrum, dtype=np.float64)[: res.rank_bound]
        idx = np.arange(1, len(s) + 1)
        positive = s > 0
        log_s = np.where(positive, np.log10(np.where(positive, s, 1.0)), np.nan)
        if positive.any():
            top = max(top, float(np.nanmax(log_s)))
            bottom = min(bottom, float(np.nanmin(log_s)))
        text = (
            f"{res.name}: {label('effective_rank_lambda')} {res.effective_rank_lambda:.1f}, "
            f"{label('effective_rank_sigma')} {res.effective_rank_sigma:.1f} "
            f"(N={res.n}, D={res.d})"
        )
        ax.plot(idx, log_s, color=color, linewidth=1.8, label=text)
        bounds.setdefault(res.rank_bound, "N − 1" if res.bounded_by_samples else "D")
    for bound, which in sorted(bounds.items()):
        ax.axvline(
            bound,
            color="0.35",
            linestyle="--",
            linewidth=1.0,
            label=f"rank bound min(D, N − 1) = {bound} ({which})",
        )
    ax.set_xlabel("eigenvalue index (descending)")
    ax.set_ylabel("log$_{10}$ λ (covariance eigenvalue)")
    normalized = {r.normalized for r in items}
    default = "Covariance eigenvalue spectrum" + (
        " (rows L2-normalised)" if normalized == {True} else ""
    )
    ax.set_title(default if title is None else title)
    ax.set_xlim(0, max(bounds) * 1.02 + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if np.isfinite(top):
        # Below ~1e-13 of the largest value a float64 covariance holds only rounding noise: let a
        # collapsed tail fall off the axes instead of squeezing the informative range.
        ax.set_ylim(max(bottom, top - _NOISE_DECADES) - 0.5, top + 0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize="small")
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
    colors = _colors(len(items))
    lo = 1.0
    for res, color in zip(items, colors, strict=False):
        _, edges = res.histogram
        ax.stairs(
            res.density(),
            edges,
            fill=True,
            alpha=0.25,
            color=color,
            label=f"{res.name}: all pairs ({label('mean_cosine')} {res.mean_cosine:.3f})",
        )
        ax.stairs(res.density(), edges, color=color, linewidth=1.2)
        for part, style, split in (
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
                    label=f"{res.name}: {split} ({label('mean_cosine')} {part.mean_cosine:.3f})",
                )
        counts, edges = res.histogram
        if counts.any():
            lo = min(lo, float(edges[np.flatnonzero(counts)[0]]))
    # Zoom on the occupied range: CT cosines often all sit in [0.8, 1].
    ax.set_xlim(max(-1.0, lo - 0.05), 1.0)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title("Pairwise cosine similarity" if title is None else title)
    ax.legend(loc="upper left", fontsize="small")
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
    """A quantity of each training run's metrics rows (default: the backbone effective rank (λ)
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
    for color, (name, seeds) in zip(_colors(len(runs)), runs.items(), strict=False):
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label(key))
    ax.set_title(title or f"{label(key)} during pretraining")
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

    An organ with no Dice for a method (absent from its validation volumes) gets no bar and an
    "n/a" mark, never a bar of height 0.

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
    for i, (m, color) in enumerate(zip(methods, _colors(len(methods)), strict=False)):
        vals = [m.mean.dice.get(o) for o in organs] + [m.mean.mean_dice]
        errs = [m.std.dice.get(o) or 0.0 for o in organs] + [m.std.mean_dice or 0.0]
        pos = x + (i - (len(methods) - 1) / 2) * width
        present = [j for j, v in enumerate(vals) if v is not None]
        ax.bar(
            pos[present],
            [100 * v for v in vals if v is not None],
            width,
            color=color,
            yerr=[100 * errs[j] for j in present] if m.seeds > 1 else None,
            label=m.label,
            capsize=2,
        )
        for j, v in enumerate(vals):
            if v is None:
                ax.text(pos[j], 1.0, "n/a", ha="center", va="bottom", rotation=90, fontsize=7)
    ax.set_xticks(x, labels, rotation=35, ha="right")
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "Linear-probe Dice per organ (n/a: organ absent)")
    ax.legend(fontsize=8, ncols=min(len(methods), 5))
    return fig, ax


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` atomically (parent folders created, tight bounding box); close it.

    The format is the suffix's (one of :data:`FIGURE_FORMATS`).

    Raises:
        ConfigError: another suffix.

    Returns:
        The path written.
    """
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in FIGURE_FORMATS:
        plt.close(fig)
        raise ConfigError(
            f"cannot write a figure as {out.name!r}: use one of {', '.join(FIGURE_FORMATS)}"
        )
    try:
        # atomic: a full disk never leaves a torn image over a good one
        with atomic_write(out, "wb") as f:
            fig.savefig(f, dpi=dpi, bbox_inches="tight", format=fmt)
    finally:
        plt.close(fig)
    return out
