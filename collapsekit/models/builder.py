"""Model configuration and the encoder: backbone (+ ZCA whitening) + projector (+ local head).

The four variants of the ablation in Hassanpour et al. (ISBI 2024, arXiv 2402.14611):
``mocov2`` (plain MoCo v2), ``local`` (+ local feature learning), ``zca`` (+ ZCA whitening) and
``local+zca`` (both, the paper's method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from collapsekit.errors import ConfigError
from collapsekit.models.backbone import BACKBONES, Backbone, build_backbone
from collapsekit.models.heads import LocalHead, ProjectionHead
from collapsekit.models.local import LOCAL_NEGATIVES
from collapsekit.models.zca import ZCA_METHODS, ZCAWhitening
from collapsekit.options import look_up_option

__all__ = [
    "LOCAL_LAYERS",
    "LOCAL_NEGATIVES",
    "METHODS",
    "ZCA_PLACEMENTS",
    "ModelConfig",
    "Encoder",
    "build_encoder",
    "whitening_group_size",
    "whitening_samples",
]

METHODS = ("mocov2", "local", "zca", "local+zca")
ZCA_PLACEMENTS = ("block", "pre_projector")
LOCAL_LAYERS = ("layer3", "layer4")

#: The largest group size the automatic rule picks (the demo's 16 and the default 64 come out of it).
MAX_AUTO_GROUP = 64


def whitening_samples(placement: str, batch_size: int, num_splits: int, image_size: int) -> int:
    """Vectors ``m`` per whitening statistic on one process (or per rank with ``num_splits`` ranks).

    ``pre_projector``: one pooled vector per sample, ``m = B / S``; ``block``: every position of
    the final map, ``m = (B / S) · (image_size / 32)²`` (output stride 32).
    """
    per_split = batch_size // max(1, math.gcd(num_splits, batch_size))
    if look_up_option(placement, ZCA_PLACEMENTS, "zca placement") == "pre_projector":
        return per_split
    return per_split * max(1, image_size // 32) ** 2


def whitening_group_size(width: int, samples: int) -> int:
    """The automatic ZCA group size: the largest divisor ``d`` of ``width`` with ``4 d ≤ m``.

    Whitening needs several samples per dimension (W-MSE whitens 64-d groups from 128 vectors;
    below ``m = d`` no method whitens at all), so the rule keeps ``m ≥ 4d`` and caps ``d`` at
    :data:`MAX_AUTO_GROUP`. Examples for ResNet-18 (512 channels), batch 32, 2 splits: ``block``
    at 128 px (m = 256) → 64; at 64 px (m = 64) → 16; ``pre_projector`` (m = 16) → 4; batch 256,
    ``pre_projector`` (m = 128) → 32.
    """
    limit = max(1, min(MAX_AUTO_GROUP, samples // 4))
    return max(d for d in range(1, limit + 1) if width % d == 0)


def upgrade_model_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ``[model]`` table) with the keys of earlier versions renamed (a copy).

    ``local_same_image_negatives`` (≤ 0.2) becomes ``local_negatives``: ``true`` → ``both`` (what
    it meant: every other point of the batch), ``false`` → ``other_images``. Used where stored
    configs are read (training configs, checkpoints).
    """
    data = dict(data)
    if "local_same_image_negatives" in data:
        old = data.pop("local_same_image_negatives")
        data.setdefault("local_negatives", "both" if old else "other_images")
    return data


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines the pretraining model (stored as plain data in checkpoints).

    Attributes:
        arch: backbone, ``resnet18`` | ``resnet34`` | ``resnet50``.
        method: ``mocov2`` | ``local`` | ``zca`` | ``local+zca``.
        proj_dim: output width of the MoCo v2 projector (128).
        proj_hidden: hidden width of the projector; ``None`` = backbone width (MoCo v2).
        queue_size: MoCo queue length ``K`` (65536 in MoCo on ImageNet; smaller for small data).
        temperature: InfoNCE temperature ``T`` (MoCo v2: 0.2), used by both losses.
        momentum: key-encoder momentum ``m`` (0.999).
        shuffle_bn_splits: on one process, BatchNorm statistics are computed over this many
            sub-batches in both encoders and the key batch is shuffled first (the official MoCo
            single-GPU emulation of shuffle-BN); ignored under ``torch.distributed``, where the
            keys are shuffled across ranks. 1 disables it.
        zca_placement: ``block`` (default; the first author's public code, which replaces
            ``layer4[-1].bn3`` by IterNorm): ZCA replaces the final norm of the last residual
            block (before the residual add and ReLU, statistics over every position);
            ``pre_projector`` (the paper's wording): ZCA on the pooled backbone vector right before
            the projector, whitening ``B / shuffle_bn_splits`` vectors per statistic.
        zca_method: ``eigh`` | ``newton_schulz`` (see :mod:`collapsekit.models.zca`).
        zca_group_size: channels per whitened group ``d``; must divide the backbone width. ``0``
            means automatic: :class:`~collapsekit.train.config.TrainConfig` replaces it by
            :func:`whitening_group_size` of the samples per whitening (``m ≥ 4d``), since only it
            knows the batch and image size; :func:`build_encoder` refuses ``0``. The layer warns
            when ``m < 2d`` (:class:`~collapsekit.models.zca.UndersampledWhiteningWarning`).
        zca_eps, zca_momentum, zca_ns_iters: see :class:`~collapsekit.models.zca.ZCAWhitening`.
        local_grid: points per side of the local grid (``G×G`` points per pair).
        local_weight: ``λ`` in ``L = L_global + λ L_local`` (0.5).
        local_dim: output width of the local head.
        local_queue_size: length of the queue of past local keys (none for ``same_image``).
        local_min_overlap: pairs whose overlap is below this fraction of the smaller crop are
            masked out of the local loss.
        local_layer: feature map the local points are sampled from: ``layer3`` (stride 16,
            default: at 128 px layer4 is 4×4 and a 4×4 grid of points is less than a cell apart)
            or ``layer4`` (stride 32).
        local_negatives: which points are a local query's negatives (its positive is always the
            same point in the other view): ``same_image`` (the paper's "differentiating between
            the local regions within the feature maps", as in the first author's code: the other
            points of the same image, no queue), ``other_images`` (DenseCL/PixPro: the points of
            the other images of the batch and a queue of past local keys; then the local loss is a
            second "which slice?" task) or ``both``. Default ``same_image``: issue 10 measured
            ``other_images`` (local loss 4.36–4.41 vs chance 8.43 in six runs) teaching what the
            global loss teaches, with no rank or Dice change; see docs/guides/training.md.
        local_min_distance: same-image points closer than this many feature cells (in either
            view, Euclidean, on the ``local_layer`` map) to the positive are not negatives: bilinear
            samples that close share most of their cells. Ignored by ``other_images``.

    Raises:
        ConfigError: an unknown option (with a "did you mean") or an out-of-range number.
    """

    arch: str = "resnet18"
    method: str = "local+zca"
    proj_dim: int = 128
    proj_hidden: int | None = None
    queue_size: int = 4096
    temperature: float = 0.2
    momentum: float = 0.999
    shuffle_bn_splits: int = 2
    zca_placement: str = "block"
    zca_method: str = "eigh"
    zca_group_size: int = 64
    zca_eps: float = 1e-4
    zca_momentum: float = 0.1
    zca_ns_iters: int = 5
    local_grid: int = 4
    local_weight: float = 0.5
    local_dim: int = 128
    local_queue_size: int = 16384
    local_min_overlap: float = 0.1
    local_layer: str = "layer3"
    local_negatives: str = "same_image"
    local_min_distance: float = 1.0

    def __post_init__(self) -> None:
        canon = {
            "arch": look_up_option(self.arch, BACKBONES, "backbone"),
            "method": look_up_option(self.method, METHODS, "method"),
            "zca_placement": look_up_option(self.zca_placement, ZCA_PLACEMENTS, "zca placement"),
            "zca_method": look_up_option(self.zca_method, ZCA_METHODS, "zca method"),
            "local_layer": look_up_option(self.local_layer, LOCAL_LAYERS, "local layer"),
            "local_negatives": look_up_option(
                self.local_negatives, LOCAL_NEGATIVES, "local negatives"
            ),
        }
        for key, value in canon.items():
            object.__setattr__(self, key, value)

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(what)

        width = self.backbone_width
        need(self.proj_dim >= 1, f"proj_dim must be >= 1, got {self.proj_dim}")
        need(
            self.proj_hidden is None or self.proj_hidden >= 1,
            f"proj_hidden must be >= 1 or None, got {self.proj_hidden}",
        )
        need(self.queue_size >= 1, f"queue_size must be >= 1, got {self.queue_size}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        need(
            self.shuffle_bn_splits >= 1,
            f"shuffle_bn_splits must be >= 1, got {self.shuffle_bn_splits}",
        )
        need(
            self.zca_group_size == 0
            or (1 <= self.zca_group_size <= width and width % self.zca_group_size == 0),
            f"zca_group_size {self.zca_group_size} must divide the {self.arch} width {width} "
            "(e.g. 16, 32, 64, 128) or be 0 (automatic)",
        )
        need(self.zca_eps > 0, f"zca_eps must be > 0, got {self.zca_eps}")
        need(
            0.0 < self.zca_momentum <= 1.0,
            f"zca_momentum must be in (0, 1], got {self.zca_momentum}",
        )
        need(self.zca_ns_iters >= 1, f"zca_ns_iters must be >= 1, got {self.zca_ns_iters}")
        need(self.local_grid >= 1, f"local_grid must be >= 1, got {self.local_grid}")
        need(self.local_weight >= 0, f"local_weight must be >= 0, got {self.local_weight}")
        need(self.local_dim >= 1, f"local_dim must be >= 1, got {self.local_dim}")
        need(
            self.local_queue_size >= 1,
            f"local_queue_size must be >= 1, got {self.local_queue_size}",
        )
        need(
            0.0 <= self.local_min_overlap <= 1.0,
            f"local_min_overlap must be in [0, 1], got {self.local_min_overlap}",
        )
        need(
            self.local_min_distance >= 0,
            f"local_min_distance must be >= 0 feature cells, got {self.local_min_distance}",
        )

    @property
    def uses_local(self) -> bool:
        """Whether the local feature-learning branch is on (``local``, ``local+zca``)."""
        return self.method in ("local", "local+zca")

    @property
    def uses_zca(self) -> bool:
        """Whether a ZCA whitening layer is inserted (``zca``, ``local+zca``)."""
        return self.method in ("zca", "local+zca")

    @property
    def uses_local_queue(self) -> bool:
        """Whether the local branch keeps a queue of past keys (not for ``same_image``)."""
        return self.uses_local and self.local_negatives != "same_image"

    @property
    def backbone_width(self) -> int:
        """Channels ``C`` of the backbone's final feature map (512 or 2048)."""
        return BACKBONES[self.arch][2]


class Encoder(nn.Module):
    """Backbone (+ ZCA at the chosen place) + MoCo v2 projector (+ optional local head).

    Attributes:
        backbone: the ResNet trunk (holds the ZCA layer for the ``block`` placement).
        projector: :class:`~collapsekit.models.heads.ProjectionHead`.
        pre_projector: ``nn.Identity`` or the ZCA layer applied to the pooled vector.
        local_head: :class:`~collapsekit.models.heads.LocalHead` or ``None``.
        local_layer: ``layer3`` or ``layer4``, the map :meth:`feature_maps` returns first.
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module,
        pre_projector: nn.Module | None = None,
        local_head: nn.Module | None = None,
        local_layer: str = "layer4",
    ) -> None:
        super().__init__()
        self.local_layer = look_up_option(local_layer, LOCAL_LAYERS, "local layer")
        self.backbone = backbone
        self.projector = projector
        self.pre_projector = pre_projector if pre_projector is not None else nn.Identity()
        self.local_head = local_head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map ``(B, 1, H, W) -> (B, C, H/32, W/32)``."""
        return self.backbone.forward_features(x)

    def feature_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The local-branch map (``local_layer``) and the final map, in one pass."""
        x3, x4 = self.backbone.forward_stages(x)
        return (x3 if self.local_layer == "layer3" else x4), x4

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled backbone output ``(B, C)``: what diagnostics and probes use.

        With the ``pre_projector`` placement this is the input of the whitening layer, never its
        (white by construction) output.
        """
        return self.features(x).mean(dim=(2, 3))

    def project(self, fmap: torch.Tensor) -> torch.Tensor:
        """Projector output ``(B, proj_dim)`` from a final feature map ``(B, C, h, w)``."""
        out: torch.Tensor = self.projector(self.pre_projector(fmap.mean(dim=(2, 3))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projector output ``(B, proj_dim)``, not normalised."""
        return self.project(self.features(x))


def build_encoder(cfg: ModelConfig) -> Encoder:
    """Build a randomly initialised :class:`Encoder` for ``cfg`` (plain BatchNorm everywhere)."""
    if cfg.uses_zca and cfg.zca_group_size == 0:
        raise ConfigError(
            "zca_group_size 0 (automatic) needs the batch and image size: build the model from a "
            "TrainConfig, or set it with whitening_group_size(width, whitening_samples(...))"
        )
    backbone = build_backbone(cfg.arch, in_channels=1)
    width = backbone.out_channels

    def zca() -> ZCAWhitening:
        return ZCAWhitening(
            width,
            group_size=cfg.zca_group_size,
            method=cfg.zca_method,
            eps=cfg.zca_eps,
            momentum=cfg.zca_momentum,
            ns_iters=cfg.zca_ns_iters,
        )

    pre: nn.Module | None = None
    if cfg.uses_zca and cfg.zca_placement == "block":
        backbone.set_last_norm(zca())
    elif cfg.uses_zca:
        pre = zca()
    projector = ProjectionHead(width, cfg.proj_hidden or width, cfg.proj_dim)
    local_width = backbone.layer3_channels if cfg.local_layer == "layer3" else width
    local_head = LocalHead(local_width, local_width, cfg.local_dim) if cfg.uses_local else None
    return Encoder(backbone, projector, pre, local_head, cfg.local_layer)
