"""The ablation's report: six figures and ``report.md`` (a table shaped like the paper's ablation),
rendered from :class:`~collapsekit.experiments.results.AblationResults`."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from collapsekit.experiments.ablation import Budget
from collapsekit.experiments.results import AblationResults, MethodResult
from collapsekit.glossary import label
from collapsekit.plotting import (
    plot_ablation_dice,
    plot_rank_history,
    plot_similarity,
    plot_spectrum,
    save_figure,
)

__all__ = ["render_report", "render_figures", "report_lines"]

_FIGURES = (
    ("spectra_global.png", "global spectra"),
    ("spectra_dense.png", "dense spectra"),
    ("dice_per_organ.png", "Dice per organ"),
    ("similarity.png", "similarity"),
    ("effective_rank_backbone.png", "backbone effective rank (λ) during pretraining"),
    ("effective_rank_projector.png", "projector effective rank (λ) during pretraining"),
)

_PROSE = (
    "Ranks are effective ranks (exp-entropy) of the L2-normalised embeddings: **effective rank "
    "(λ)** on the covariance eigenvalues (the variance spectrum Jing et al. plot; it shows collapse "
    "clearly), **effective rank (σ)** on the singular values of the centred matrix (compresses "
    "differences). Backbone and "
    "dense: the evaluation slices (backbone: pooled output, what probes use; the input of a "
    "pre-projector ZCA). Projector: the contrastive space on the held-out monitor slices, from "
    "the run's last metrics row, as are loss_global (chance ln(K+1)), top1_in_batch (chance 1/B) "
    "and the health verdict (healthy / not learning / collapsed; collapsekit.diagnostics.health). "
    "Dice: linear probe, 3D, per organ, mean over the organs (%). The random baseline has its "
    "BatchNorm statistics re-estimated on the evaluation data."
)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


#: The table's columns, in the order of :func:`_row`: the glossary's labels, capitalised.
_HEADER = (
    "Method",
    "Local",
    "ZCA",
    "loss_global (ln(K+1))",
    "top1_in_batch",
    "Health",
    *(
        _capitalised(label(key))
        for key in (
            "projector/effective_rank_lambda",
            "projector/mean_cosine",
            "backbone/effective_rank_lambda",
            "backbone/effective_rank_sigma",
            "dense/effective_rank_lambda",
            "backbone/alpha",
            "backbone/mean_cosine",
            "mean_dice",
        )
    ),
)


def render_report(results: AblationResults, out: str | Path) -> Path:
    """Write the figures and ``report.md``; return the report's path."""
    out = Path(out)
    render_figures(results, out)
    path = out / "report.md"
    path.write_text("\n".join(report_lines(results)))
    return path


def render_figures(results: AblationResults, out: Path) -> None:
    """The six figures of the report, each method named by its label."""
    methods = results.methods
    glob = [replace(m.evals[0].backbone, name=m.label) for m in methods]
    dense = [replace(m.evals[0].dense, name=m.label) for m in methods]
    sims = [results.pixels] + [replace(m.evals[0].similarity, name=m.label) for m in methods]
    histories = {m.label: list(m.history) for m in methods if m.history}
    figures = {
        "spectra_global.png": plot_spectrum(glob, title="Global (pooled) backbone spectrum")[0],
        "spectra_dense.png": plot_spectrum(dense, title="Dense (per-location) feature spectrum")[0],
        "similarity.png": plot_similarity(sims)[0],
        "dice_per_organ.png": plot_ablation_dice(methods)[0],
    }
    for space in ("backbone", "projector"):
        key = f"{space}/effective_rank_lambda"
        title = f"{_capitalised(label(key))} of the monitor slices during pretraining"
        figures[f"effective_rank_{space}.png"] = plot_rank_history(histories, key=key, title=title)[
            0
        ]
    for name, fig in figures.items():
        save_figure(fig, out / name)


def _fmt(
    mean: float | None, std: float | None, seeds: int, pct: bool = False, digits: int = 1
) -> str:
    if mean is None or math.isnan(mean):
        return "–"
    scale = 100.0 if pct else 1.0
    txt = f"{mean * scale:.{digits}f}"
    if seeds > 1 and std is not None:
        txt += f" ± {std * scale:.{digits}f}"
    return txt


def _schedule(settings: Budget) -> str:
    if settings.steps is not None:
        return f"{settings.steps} steps"
    if settings.epochs is not None:
        return f"{settings.epochs} epochs"
    budget = settings.train_budget
    return f"train budget `{budget}`" if budget else "default schedule"


def _row(m: MethodResult) -> str:
    """One table row: the mean (± std over seeds) of each column."""
    mean, std, n = m.mean.to_dict(), m.std.to_dict(), m.seeds

    def cell(key: str, digits: int = 1, pct: bool = False) -> str:
        return _fmt(mean.get(key), std.get(key), n, pct=pct, digits=digits)

    chance = m.mean.loss_chance
    loss = cell("loss_global", 2) + (f" ({chance:.2f})" if chance else "")
    flag = {True: "✓", False: "", None: "–"}
    cells = [
        m.label,
        flag[m.local],
        flag[m.zca],
        loss,
        cell("top1_in_batch", 2),
        m.mean.health or "–",
        cell("projector/effective_rank_lambda"),
        cell("projector/mean_cosine", 3),
        cell("backbone/effective_rank_lambda"),
        cell("backbone/effective_rank_sigma"),
        cell("dense/effective_rank_lambda"),
        cell("backbone/alpha", 2),
        cell("backbone/mean_cosine", 3),
        cell("mean_dice", 1, True),
    ]
    return "| " + " | ".join(cells) + " |"


def _organs(results: AblationResults) -> list[str]:
    return list(dict.fromkeys(o for m in results.methods for o in m.mean.dice))


def _dice_rows(results: AblationResults) -> list[str]:
    organs = _organs(results)
    lines = ["| Method | " + " | ".join(organs) + " |", "|---|" + "--:|" * len(organs)]
    for m in results.methods:
        cells = [_fmt(m.mean.dice.get(o), m.std.dice.get(o), m.seeds, pct=True) for o in organs]
        lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
    return lines


def report_lines(results: AblationResults) -> list[str]:
    """The lines of ``report.md``."""
    cfg, s = results.config, results.settings
    seeds = max(m.seeds for m in results.methods)
    head = (
        f"Pretraining data: `{cfg.dataset}`; evaluation: `{cfg.eval_dataset}`; budget "
        f"`{cfg.budget}` ({s.arch}, {_schedule(s)}, {s.image_size} px); seeds: {seeds}"
        f"{' (mean ± std)' if seeds > 1 else ''}."
    )
    lines = ["# collapsekit ablation report", "", head, "", _PROSE, ""]
    lines += [
        "| " + " | ".join(_HEADER) + " |",
        "|---|:-:|:-:|--:|--:|:-:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *(_row(m) for m in results.methods),
        "",
        "Per-organ Dice (%; – where the organ is absent):",
        "",
        *_dice_rows(results),
        "",
        f"Pixel-space cosine similarity of the slices: mean {results.pixels.mean_cosine:.3f} — CT slices "
        "look alike, the regime in which the paper observes collapse.",
        "",
        *(f"![{alt}]({name})" for name, alt in _FIGURES),
        "",
    ]
    return lines
