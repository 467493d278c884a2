"""Evaluation of models: embedding extraction, spectrum/similarity reports, segmentation.

A peer of training: it takes models (checkpoints, run directories, foreign weights) and volumes,
and never imports :mod:`collapsekit.train`.
"""

from __future__ import annotations

from collapsekit.evaluation.extract import Embeddings, extract_embeddings, pixel_vectors
from collapsekit.evaluation.report import similarity_analysis, spectrum_analysis
from collapsekit.evaluation.segmentation import (
    FinetuneConfig,
    ProbeConfig,
    SegmentationResult,
    dice_per_organ,
    finetune,
    linear_probe,
)

__all__ = [
    "Embeddings",
    "extract_embeddings",
    "pixel_vectors",
    "spectrum_analysis",
    "similarity_analysis",
    "ProbeConfig",
    "SegmentationResult",
    "linear_probe",
    "FinetuneConfig",
    "finetune",
    "dice_per_organ",
]
