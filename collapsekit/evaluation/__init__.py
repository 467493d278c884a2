"""Evaluation of models: embedding extraction, spectrum/similarity reports, segmentation.

A peer of training: it takes models (checkpoints, run directories, foreign weights) and volumes,
and never imports :mod:`collapsekit.train`.
"""

from __future__ import annotations

from collapsekit.evaluation.extract import (
    Embeddings,
    extract_embeddings,
    pixel_vectors,
    recalibrate_baseline,
)
from collapsekit.evaluation.report import (
    DataSpec,
    SimilarityReport,
    SpectrumReport,
    similarity_analysis,
    spectrum_analysis,
    write_similarity_report,
    write_spectrum_report,
)
from collapsekit.evaluation.segmentation import (
    FinetuneConfig,
    ProbeConfig,
    SegmentationResult,
    dice_per_organ,
    finetune,
    linear_probe,
    score_predictions,
)

__all__ = [
    "Embeddings",
    "extract_embeddings",
    "recalibrate_baseline",
    "pixel_vectors",
    "DataSpec",
    "spectrum_analysis",
    "similarity_analysis",
    "SpectrumReport",
    "SimilarityReport",
    "write_spectrum_report",
    "write_similarity_report",
    "ProbeConfig",
    "SegmentationResult",
    "linear_probe",
    "FinetuneConfig",
    "finetune",
    "dice_per_organ",
    "score_predictions",
]
