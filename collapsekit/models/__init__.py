"""Models: MONAI ResNet backbones, ZCA whitening, heads, MoCo v2 and local feature learning."""

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
    whitening_group_size,
    whitening_samples,
)
from collapsekit.models.heads import LocalHead, ProjectionHead
from collapsekit.models.local import (
    close_points,
    local_info_nce,
    local_info_nce_loss,
    local_negative_mask,
    overlap_grid,
    sample_local_features,
)
from collapsekit.models.moco import (
    MoCo,
    MoCoOutput,
    Queue,
    info_nce_logits,
    update_momentum,
)
from collapsekit.models.split_bn import SplitBatchNorm2d, convert_split_bn, split_order
from collapsekit.models.zca import (
    ZCA_METHODS,
    UndersampledWhiteningWarning,
    ZCAWhitening,
    inv_sqrt_eigh,
    inv_sqrt_newton_schulz,
    whitening_matrix,
)

__all__ = [
    "BACKBONES",
    "LOCAL_LAYERS",
    "LOCAL_NEGATIVES",
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
    "UndersampledWhiteningWarning",
    "ZCAWhitening",
    "build_backbone",
    "build_encoder",
    "convert_split_bn",
    "split_order",
    "info_nce_logits",
    "inv_sqrt_eigh",
    "inv_sqrt_newton_schulz",
    "recalibrate_batch_norm",
    "close_points",
    "local_info_nce",
    "local_info_nce_loss",
    "local_negative_mask",
    "overlap_grid",
    "sample_local_features",
    "update_momentum",
    "whitening_group_size",
    "whitening_matrix",
    "whitening_samples",
]
