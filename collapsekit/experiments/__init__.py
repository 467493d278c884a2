"""Experiments built from training and evaluation: the paper's ablation."""

from __future__ import annotations

from collapsekit.experiments.ablation import (
    AblationConfig,
    load_results,
    render_report,
    run_ablation,
)

__all__ = ["AblationConfig", "run_ablation", "load_results", "render_report"]
