"""Runs: the checkpoint format, run directories (naming, ``runs/latest``) and loading any model."""

from __future__ import annotations

from collapsekit.runs.checkpoint import (
    build_checkpoint,
    load_checkpoint,
    restore_checkpoint,
    safe_torch_load,
    save_checkpoint,
)
from collapsekit.runs.export import ExportResult, export_backbone
from collapsekit.runs.models import LoadedModel, ModelOptions, load_model
from collapsekit.runs.rundir import resolve_latest

__all__ = [
    "build_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "safe_torch_load",
    "LoadedModel",
    "ModelOptions",
    "load_model",
    "resolve_latest",
    "ExportResult",
    "export_backbone",
]
