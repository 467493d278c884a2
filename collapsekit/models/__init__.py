"""Models: MONAI ResNet backbones, ZCA whitening, heads, MoCo v2 and local feature learning.

The names below are the public API. The numerical helpers behind them (``inv_sqrt_eigh``,
``inv_sqrt_newton_schulz``, ``whitening_matrix``, ``overlap_grid``, ``sample_local_features``,
``split_order``) stay importable from their modules for tests and the curious, but are not part
of the API.
"""

from __future__ import annotations

from collapsekit.models.backbone import BACKBONES, Backbone, build_backbone, recalibrate_batch_norm
from collapsekit.models.builder import (
    LOCAL_LAYERS,
    LOCAL_NEGATIVES,
    METHODS,
    ZCA_PLACEMENTS,
    Encoder,
    ModelConfig,
    build_encoder,
)
from collapsekit.models.heads import LocalHead, ProjectionHead
from collapsekit.models.local import local_info_nce, local_info_nce_loss
from collapsekit.models.moco import MoCo, MoCoOutput, Queue, info_nce_logits, update_momentum
from collapsekit.models.split_bn import SplitBatchNorm2d, convert_split_bn
from collapsekit.models.zca import ZCA_METHODS, UndersampledWhiteningWarning, ZCAWhitening

__all__ = [
    "BACKBONES",
    "LOCAL_LAYERS",
    "LOCAL_NEGATIVES",
    "UndersampledWhiteningWarning",
    "METHODS",
    "ZCA_METHODS",
    "ZCA_PLACEMENTS",
    "Backbone",
    "Encoder",
    "LocalHead",
    "ModelConfig",
    "MoCo",
    "MoCoOutput",
    "ProjectionHead",
    "Queue",
    "SplitBatchNorm2d",
    "ZCAWhitening",
    "build_backbone",
    "build_encoder",
    "convert_split_bn",
    "info_nce_logits",
    "recalibrate_batch_norm",
    "local_info_nce",
    "local_info_nce_loss",
    "update_momentum",
]
