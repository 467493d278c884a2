"""Experiments built from training and evaluation: the paper's ablation (configuration and budgets
in :mod:`~collapsekit.experiments.ablation`, running in :mod:`~collapsekit.experiments.run`, typed
results in :mod:`~collapsekit.experiments.results`, the report in
:mod:`~collapsekit.experiments.report`)."""

from __future__ import annotations

from collapsekit.experiments.ablation import AblationConfig
from collapsekit.experiments.report import render_report
from collapsekit.experiments.results import AblationResults, MethodResult, RunSummary
from collapsekit.experiments.run import load_results, run_ablation

__all__ = [
    "AblationConfig",
    "AblationResults",
    "MethodResult",
    "RunSummary",
    "run_ablation",
    "load_results",
    "render_report",
]
