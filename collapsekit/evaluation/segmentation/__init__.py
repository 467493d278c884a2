"""Segmentation evaluation of a pretrained backbone: linear probe, fine-tuning, 3D Dice scoring."""

from __future__ import annotations

from collapsekit.evaluation.segmentation.finetune import FinetuneConfig, finetune
from collapsekit.evaluation.segmentation.probe import ProbeConfig, linear_probe
from collapsekit.evaluation.segmentation.scoring import (
    SegmentationResult,
    dice_per_organ,
    score_predictions,
)

__all__ = [
    "ProbeConfig",
    "SegmentationResult",
    "linear_probe",
    "FinetuneConfig",
    "finetune",
    "dice_per_organ",
    "score_predictions",
]
