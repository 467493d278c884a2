"""Fine-tuning: the pretrained encoder under a MONAI UNet decoder, all weights trained.

The encoder is a copy of a ResNet-style backbone (``conv1, bn1, act, maxpool, layer1..4``, e.g.
:class:`~collapsekit.models.backbone.Backbone`); its five stages give features at strides 2, 4, 8,
16 and 32 (widths 64, 64, 128, 256, 512 for ResNet-18), exactly the list MONAI's
:class:`~monai.networks.nets.FlexibleUNet` feeds its :class:`~monai.networks.nets.flexible_unet.UNetDecoder`
(upsample ×2 + concatenate the skip + two conv-BN-ReLU per level, channels
``(256, 128, 64, 32, 16)``) followed by a 3×3 ``SegmentationHead`` with one output per class. Slices
are resized to ``image_size``, the network is trained end to end (AdamW, cosine schedule,
cross-entropy + soft Dice), and evaluation is the probe's: every slice of each validation volume is
predicted, logits bilinearly upsampled to the native in-plane size, stacked into ``(H, W, Z)`` and
scored per organ in 3D (:func:`~collapsekit.evaluation.segmentation.scoring.dice_per_organ`).

Unlike the linear probe this measures what a pretrained initialisation is worth once everything is
trained; the paper (Hassanpour et al., ISBI 2024) reports the probe as its main metric.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from collapsekit.data.validate import check_labelled
from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError
from collapsekit.evaluation.segmentation._data import (
    augment_slices,
    check_options,
    select_fraction,
    training_slices,
)
from collapsekit.evaluation.segmentation.fit import fit, schedule_steps, segmentation_loss
from collapsekit.evaluation.segmentation.predict import check_encodes, predict_volumes
from collapsekit.evaluation.segmentation.scoring import SegmentationResult, score_predictions
from collapsekit.options import look_up_option
from collapsekit.progress import ProgressCallback

__all__ = ["FinetuneConfig", "finetune"]

DECODERS = ("unet",)
_STAGES = ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of :func:`finetune`.

    Attributes:
        epochs: passes over the training slices.
        lr: AdamW learning rate of all weights (cosine-annealed to 0).
        weight_decay: AdamW weight decay.
        batch_size: slices per step.
        image_size: side ``S`` every slice is resized to; a multiple of 32.
        decoder: ``unet`` (MONAI's FlexibleUNet decoder).
        decoder_channels: widths of the five decoder levels, coarse to fine.
        dice_loss: add MONAI's soft Dice loss (background excluded) to the cross-entropy.
        label_fraction: fraction of the training volumes used, in (0, 1] (deterministic subset).
        seed: seeds the decoder initialisation, the subset, the shuffling and the augmentation.
        augment: random scale/shift and intensity jitter of training slices.

    Raises:
        ConfigError: a value out of range or an unknown decoder.
    """

    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    image_size: int = 128
    decoder: str = "unet"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    dice_loss: bool = True
    label_fraction: float = 1.0
    seed: int = 0
    augment: bool = False

    def __post_init__(self) -> None:
        check_options(self)
        object.__setattr__(self, "decoder", look_up_option(self.decoder, DECODERS, "decoder"))
        object.__setattr__(self, "decoder_channels", tuple(int(c) for c in self.decoder_channels))
        if len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1:
            raise ConfigError(
                f"decoder_channels must be 5 positive widths, got {self.decoder_channels}"
            )


class SegmentationNet(nn.Module):
    """ResNet encoder + MONAI UNet decoder + segmentation head: ``(B, 1, S, S) -> (B, K, S, S)``.

    Args:
        encoder: a ResNet-style backbone (``conv1, bn1, act|relu, maxpool, layer1..4``); used as
            is (not copied) and trained.
        num_classes: ``K``, background included.
        decoder_channels: widths of the five decoder levels.
        image_size: used once to measure the encoder's stage widths.

    Raises:
        ConfigError: the encoder lacks the ResNet stages or is dilated.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        image_size: int = 128,
    ) -> None:
        super().__init__()

        missing = [s for s in _STAGES if not hasattr(encoder, s)]
        if missing or not (hasattr(encoder, "act") or hasattr(encoder, "relu")):
            raise ConfigError(
                f"fine-tuning needs a ResNet-style backbone (conv1, bn1, act, maxpool, layer1..4); "
                f"{type(encoder).__name__} lacks {', '.join(missing) or 'act'}"
            )
        if getattr(encoder, "stride", 32) != getattr(encoder, "undilated_stride", 32):
            raise ConfigError("fine-tuning needs an undilated backbone (output stride 32)")
        self.encoder = encoder
        self.in_channels = int(getattr(encoder, "in_channels", 1))
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            p = next(iter(encoder.parameters()))
            probe = torch.zeros(2, 1, image_size, image_size, device=p.device, dtype=p.dtype)
            widths = [f.shape[1] for f in self.stages(probe)]
        encoder.train(was_training)
        self.decoder = UNetDecoder(
            spatial_dims=2,
            encoder_channels=(self.in_channels, *widths),
            decoder_channels=tuple(decoder_channels),
            act=("relu", {"inplace": True}),
            norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
            dropout=0.0,
            bias=False,
            upsample="nontrainable",
            pre_conv="default",
            interp_mode="nearest",
            align_corners=None,
            is_pad=True,
        )
        self.head = SegmentationHead(
            spatial_dims=2,
            in_channels=decoder_channels[-1],
            out_channels=num_classes,
            kernel_size=3,
        )

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features at strides 2, 4, 8, 16, 32 (MONAI ``ResNetEncoder`` order)."""
        e = cast(Any, self.encoder)  # ResNet stages checked in __init__
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # grayscale slice into an RGB-pretrained stem
        act = e.act if hasattr(e, "act") else e.relu
        s2 = act(e.bn1(e.conv1(x)))
        s4 = e.layer1(e.maxpool(s2))
        s8 = e.layer2(s4)
        s16 = e.layer3(s8)
        s32 = e.layer4(s16)
        return [s2, s4, s8, s16, s32]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.decoder(self.stages(x), 4))
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


def finetune(
    backbone: nn.Module,
    train: Sequence[Volume],
    val: Sequence[Volume],
    labels: Mapping[int, str],
    cfg: FinetuneConfig | None = None,
    *,
    name: str = "model",
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    save_predictions: str | Path | None = None,
) -> SegmentationResult:
    """Fine-tune ``backbone`` under a UNet decoder on ``train``; score per organ in 3D on ``val``.

    Args:
        backbone: a ResNet-style backbone; it is deep-copied, the caller's module is not modified.
        train: labelled training volumes (slices in ``Volume.slices``).
        val: labelled validation volumes (every slice predicted).
        labels: organ id -> name; classes are 0 plus these ids.
        cfg: a :class:`FinetuneConfig` (defaults when ``None``).
        name: display name stored in the result.
        device: torch device.
        progress: receives per-epoch (``loss``) and prediction events.
        save_predictions: directory for ``<case_id>_pred.nii.gz`` label maps.

    Returns:
        A :class:`~collapsekit.evaluation.segmentation.scoring.SegmentationResult` with ``method="finetune"``.

    Raises:
        DataError: as :func:`~collapsekit.evaluation.segmentation.probe.linear_probe`.
        ConfigError: a backbone without ResNet stages, or a dilated one.
    """
    cfg = cfg or FinetuneConfig()
    dev = torch.device(device)
    check_labelled(train, val, labels, what="fine-tuning")
    train_used = select_fraction(train, cfg.label_fraction, cfg.seed)
    encoder = copy.deepcopy(backbone).to(dev)
    encoder.requires_grad_(True)
    num_classes = len(labels) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = SegmentationNet(encoder, num_classes, cfg.decoder_channels, cfg.image_size).to(dev)
    model.eval()
    check_encodes(model, cfg.image_size, dev, getattr(backbone, "in_channels", None))

    images, targets = training_slices(train_used, labels, cfg.image_size)
    n = images.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = segmentation_loss(num_classes, cfg.dice_loss)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = schedule_steps(n, cfg.batch_size, cfg.epochs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        x, y = images[idx].to(dev), targets[idx].long().to(dev)
        if cfg.augment:
            x, y = augment_slices(x, y, gen)
        return loss_fn(model(x), y)

    t_train = time.perf_counter()
    history = fit(
        model,
        batch_loss,
        n,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        optimizer=opt,
        scheduler=sched,
        generator=gen,
        task="finetune/train",
        description=f"fine-tuning {name}",
        progress=progress,
    )
    train_s = time.perf_counter() - t_train

    model.eval()
    t_pred = time.perf_counter()
    predictions = predict_volumes(
        model,
        val,
        labels,
        cfg.image_size,
        cfg.batch_size,
        dev,
        task="finetune/predict",
        progress=progress,
    )
    config = asdict(cfg)
    config["decoder_channels"] = list(cfg.decoder_channels)
    info = {
        "train_s": train_s,
        "predict_s": time.perf_counter() - t_pred,
        "train_slices": n,
        "train_cases": [v.case_id for v in train_used],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return score_predictions(
        name,
        "finetune",
        predictions,
        val,
        labels,
        history=history,
        config=config,
        info=info,
        save_predictions=save_predictions,
    )
