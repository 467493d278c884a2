"""Linear probe for segmentation: a 1×1 convolution on a frozen backbone's final feature map.

The paper's measure of representation quality "without relying on decoder complexity"
(Hassanpour et al., ISBI 2024, arXiv 2402.14611, Sec. 3; mmsegmentation linear head). Procedure:

1. The backbone is deep-copied, put in eval mode (BatchNorm and ZCA whitening use their running
   statistics), frozen (``requires_grad=False``) and optionally dilated to output stride 8 or 16
   (DeepLab-style, like the r50-d8 of mmsegmentation). The caller's module is never touched.
2. Every axial training slice listed in ``Volume.slices`` is resized (bilinear) to
   ``image_size × image_size`` and encoded under ``no_grad`` into ``(C, S/os, S/os)`` features. Without
   augmentation the features are computed once and cached (memory tensor or a disk ``np.memmap``), so
   an epoch costs only the head.
3. The head is ``BatchNorm2d(C, affine=False)`` followed by ``Conv2d(C, K, 1)`` (MAE-style linear
   probing, He et al. 2022: the normalisation is a per-channel affine map, so the probe stays linear
   in the features). Its logits are bilinearly upsampled to ``S × S`` and trained with
   cross-entropy (+ optional soft Dice, :class:`monai.losses.DiceLoss`) against the nearest-resized
   labels, Adam with a cosine schedule; the conv starts at zero, so the problem is convex and
   deterministic.
4. Every slice of each validation volume (all ``Z`` slices, including those the data layer marked as
   "no body": the evaluation must not depend on that heuristic) is encoded, its logits upsampled
   bilinearly straight to the native in-plane size ``(H, W)``, argmaxed, and the slices are stacked
   back into an ``(H, W, Z)`` label map scored per organ in 3D by :func:`dice_per_organ`.

Classes are ``0`` (background) plus the ids of ``labels`` (14 for BTCV), mapped to contiguous indices
internally and back to the dataset's ids in predictions.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from collapsekit.data.slices import resize_label, resize_slice
from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError, DataError
from collapsekit.evaluation.segmentation.scoring import dice_per_organ
from collapsekit.options import look_up_option
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit

__all__ = [
    "CACHE_MODES",
    "ProbeConfig",
    "SegmentationResult",
    "LinearHead",
    "bilinear_matrix",
    "forward_features",
    "frozen_backbone",
    "encode_slices",
    "linear_probe",
    "score_predictions",
]

CACHE_MODES = ("memory", "disk", "none")


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of :func:`linear_probe`.

    Attributes:
        epochs: passes over the training slices.
        lr: Adam learning rate of the head (cosine-annealed to 0 over all steps).
        weight_decay: Adam weight decay of the head.
        batch_size: slices per step (training and encoding).
        image_size: side ``S`` every slice is resized to; a multiple of 32.
        output_stride: 8, 16 or 32; below 32 the last stages are dilated (feature map ``S/os``).
        dice_loss: add MONAI's soft Dice loss (background excluded) to the cross-entropy.
        label_fraction: fraction of the training volumes used, in (0, 1]; a deterministic subset
            (seeded permutation of the case ids), at least one volume.
        seed: seeds the subset, the shuffling and the augmentation.
        cache: ``memory``, ``disk`` (``np.memmap`` under ``cache_dir``) or ``none`` (re-encode
            every epoch). Ignored when ``augment`` is set, since augmented slices must be
            re-encoded.
        cache_dir: directory of the disk cache (a temporary directory when ``None``).
        augment: random scale/shift and intensity jitter of training slices (no flips: CT has a
            left and a right kidney).

    Raises:
        ConfigError: a value out of range or an unknown cache mode.
    """

    epochs: int = 20
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int = 32
    image_size: int = 128
    output_stride: int = 32
    dice_loss: bool = False
    label_fraction: float = 1.0
    seed: int = 0
    cache: str = "memory"
    cache_dir: str | None = None
    augment: bool = False

    def __post_init__(self) -> None:
        _check_common(self)
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        object.__setattr__(self, "cache", look_up_option(self.cache, CACHE_MODES, "cache mode"))

    @property
    def caches_features(self) -> bool:
        """Whether features are computed once and reused (no augmentation, cache enabled)."""
        return not self.augment and self.cache != "none"


def _check_common(cfg: Any) -> None:
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be ≥ 1, got {cfg.epochs}")
    if not cfg.lr > 0:
        raise ConfigError(f"lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay must be ≥ 0, got {cfg.weight_decay}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {cfg.batch_size}")
    if cfg.image_size < 32 or cfg.image_size % 32:
        raise ConfigError(f"image_size must be a positive multiple of 32, got {cfg.image_size}")
    if not 0 < cfg.label_fraction <= 1:
        raise ConfigError(f"label_fraction must be in (0, 1], got {cfg.label_fraction}")


@dataclass
class SegmentationResult:
    """Per-organ 3D Dice of a probed or fine-tuned model on the validation volumes.

    Attributes:
        checkpoint: display name of the model.
        method: ``linear_probe`` or ``finetune``.
        mean_dice: mean over organs of ``dice`` (organs present in no validation volume are left
            out and listed with ``None`` in ``dice``); the paper's "mean Dice over 13 organs".
        mean_dice_present: mean over volumes of each volume's mean Dice over the organs present in
            its ground truth.
        dice: organ -> mean Dice over the validation volumes where the organ is present, or
            ``None`` when it is present in none.
        per_volume: case id -> organ -> Dice, ``None`` where the organ is absent from the case.
        absent: case id -> organs absent from its ground truth.
        absent_predicted_voxels: case id -> absent organ -> voxels predicted anyway (false
            positives).
        history: one dict per epoch: ``epoch``, ``loss``, ``lr``, ``seconds``.
        config: the configuration as plain data.
        info: timings (``encode_s``, ``train_s``, ``predict_s``), ``cache_bytes``,
            ``feature_shape`` ``(C, h, w)``, ``train_slices``, ``train_cases``.
    """

    checkpoint: str
    method: str
    mean_dice: float
    mean_dice_present: float
    dice: dict[str, float | None]
    per_volume: dict[str, dict[str, float | None]]
    absent: dict[str, list[str]]
    absent_predicted_voxels: dict[str, dict[str, int]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (NaN means become ``None``)."""
        d = asdict(self)
        for key in ("mean_dice", "mean_dice_present"):
            if isinstance(d[key], float) and not math.isfinite(d[key]):
                d[key] = None
        return d


class LinearHead(nn.Module):
    """``BatchNorm2d(C, affine=False)`` then a zero-initialised ``Conv2d(C, K, 1)``.

    ``(B, C, h, w) -> (B, K, h, w)``. In eval mode the normalisation uses running statistics, so
    the whole head is one affine map per location (a linear probe).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, affine=False)
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(cast(torch.Tensor, self.conv.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


# ----------------------------------------------------------------------------------------------
# Shared with fine-tuning: input validation, slice preparation, prediction and scoring.


def _check_volumes(
    train: Sequence[Volume], val: Sequence[Volume], labels: Mapping[int, str], *, what: str
) -> None:
    """Raise :class:`DataError` naming the case for every unusable training/validation volume."""
    if not labels:
        raise DataError("no organ labels given: labels must map at least one organ id to a name")
    if len(labels) > 254:
        raise DataError(f"at most 254 organ classes are supported, got {len(labels)}")
    if any(int(k) < 1 for k in labels):
        raise DataError(f"organ ids must be ≥ 1 (0 is background), got {sorted(labels)}")
    if len(train) == 0:
        raise DataError(f"the training split is empty: the {what} needs labelled training volumes")
    if len(val) == 0:
        raise DataError(
            f"the validation split is empty: the {what} needs at least one labelled validation volume"
        )
    allowed = {0, *(int(k) for k in labels)}
    seen: set[str] = set()
    present_any = False
    for split, volumes in (("training", train), ("validation", val)):
        for v in volumes:
            case = v.case_id
            if split == "validation":
                if case in seen:
                    raise DataError(
                        f"validation case '{case}' appears twice; case ids must be unique"
                    )
                seen.add(case)
            if v.label is None:
                raise DataError(
                    f"{split} case '{case}' has no label map; the {what} needs labels on every "
                    "training and validation case"
                )
            if v.image.ndim != 3:
                raise DataError(
                    f"{split} case '{case}': expected an (H, W, Z) image, got shape {v.image.shape}"
                )
            if v.image.shape != v.label.shape:
                raise DataError(
                    f"{split} case '{case}': image shape {tuple(v.image.shape)} and label shape "
                    f"{tuple(v.label.shape)} differ"
                )
            lab = np.asarray(v.label)
            if lab.dtype.kind == "f" and not np.array_equal(lab, np.round(lab)):
                raise DataError(f"{split} case '{case}': label map holds non-integer values")
            found = _values(lab)
            extra = sorted(found - allowed)
            if extra:
                raise DataError(
                    f"{split} case '{case}': label values {extra[:8]} are outside the class set "
                    f"(0 = background, organs {sorted(allowed - {0})})"
                )
            if split == "validation" and found - {0}:
                present_any = True
    if not present_any:
        raise DataError(
            "no organ of the label set appears in any validation volume: nothing to score"
        )


def _values(lab: np.ndarray) -> set[int]:
    """Distinct values of an integer array (bincount is far faster than unique on 10⁷ voxels)."""
    lab = lab.astype(np.int64, copy=False)
    lo = int(lab.min())
    if lo < 0:
        return {int(x) for x in np.unique(lab)}
    return {int(x) for x in np.flatnonzero(np.bincount(lab.ravel()))}


def _select_fraction(train: Sequence[Volume], fraction: float, seed: int) -> list[Volume]:
    """A deterministic subset of ``max(1, round(fraction · n))`` volumes (seeded permutation)."""
    if fraction >= 1:
        return list(train)
    order = sorted(range(len(train)), key=lambda i: train[i].case_id)
    perm = np.random.default_rng(seed).permutation(len(order))
    n = max(1, round(fraction * len(train)))
    keep = sorted(order[i] for i in perm[:n])
    return [train[i] for i in keep]


def _class_lut(labels: Mapping[int, str], max_value: int) -> np.ndarray:
    ids = sorted(int(k) for k in labels)
    lut = np.zeros(max(max_value, ids[-1]) + 1, dtype=np.uint8)
    for i, k in enumerate(ids):
        lut[k] = i + 1
    return lut


def _training_slices(
    volumes: Sequence[Volume], labels: Mapping[int, str], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack usable slices: images ``(N, 1, S, S)`` float32, class indices ``(N, S, S)`` uint8."""
    images, targets = [], []
    for v in volumes:
        idx = np.asarray(v.slices, dtype=np.int64)
        if idx.size == 0:
            continue
        assert v.label is not None
        img = torch.from_numpy(np.ascontiguousarray(np.moveaxis(v.image[..., idx], -1, 0)))
        lab = np.moveaxis(np.asarray(v.label)[..., idx], -1, 0).astype(np.int64)
        cls = torch.from_numpy(_class_lut(labels, int(lab.max()))[lab])
        images.append(resize_slice(img.float()[:, None], size))
        targets.append(resize_label(cls, size))
    if not images:
        raise DataError(
            "no usable training slices: every training volume has an empty `slices` list"
        )
    return torch.cat(images), torch.cat(targets)


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches of a (shuffled) epoch; a trailing batch of one joins the previous one so
    that BatchNorm in train mode always sees more than one value per channel."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = list(torch.split(order, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    # Sorted within a batch (same set, same loss): sequential reads from a disk cache.
    return [c.sort().values for c in chunks]


def _augment(
    x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale (0.9–1.1) and shift (±10 %) of image and label, and intensity jitter.

    ``x``: ``(B, 1, S, S)`` images, ``y``: ``(B, S, S)`` class indices. No flips: left and right
    organs (kidneys, adrenals) must keep their side.
    """
    b = x.shape[0]
    r = torch.rand(b, 5, generator=generator).to(x.device)
    scale = 0.9 + 0.2 * r[:, 0]
    shift = (r[:, 1:3] - 0.5) * 0.2
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xa = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    ya = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0]
    gain = (0.9 + 0.2 * r[:, 3]).view(b, 1, 1, 1)
    bias = ((r[:, 4] - 0.5) * 0.1).view(b, 1, 1, 1)
    return (xa * gain + bias), ya.round().long()


def _check_encodes(
    model: Callable[[torch.Tensor], torch.Tensor],
    size: int,
    device: torch.device,
    in_channels: int | None,
) -> tuple[int, ...]:
    """Run one blank slice through ``model``; a mismatch becomes a one-line :class:`DataError`."""
    if in_channels is not None and in_channels not in (1, 3):
        raise DataError(
            f"the backbone expects {in_channels} input channels but CT slices have 1 "
            "(supported: 1, or 3 for RGB-pretrained weights)"
        )
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 1, size, size, device=device))
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"the backbone cannot encode 1-channel {size}×{size} slices "
            f"(in_channels={in_channels}): {first}"
        ) from None
    if out.ndim != 4:
        raise DataError(f"the backbone returned shape {tuple(out.shape)}, expected (B, C, h, w)")
    return tuple(out.shape[1:])


def _predict_volumes(
    predict_logits: Callable[[torch.Tensor], torch.Tensor],
    volumes: Sequence[Volume],
    labels: Mapping[int, str],
    size: int,
    batch_size: int,
    device: torch.device,
    *,
    task: str,
    progress: ProgressCallback | None,
) -> dict[str, np.ndarray]:
    """Predict every slice of each volume; returns case id -> ``(H, W, Z)`` label map (dataset ids).

    ``predict_logits`` maps ``(B, 1, S, S)`` slices to ``(B, K, h, w)`` logits at any resolution;
    they are bilinearly upsampled to the native ``(H, W)`` before the argmax.
    """
    ids = torch.tensor([0, *sorted(int(k) for k in labels)], device=device)
    out: dict[str, np.ndarray] = {}
    emit(
        progress, TaskStarted(task, total=len(volumes), description="predicting validation volumes")
    )
    for v in volumes:
        h, w, z = v.image.shape
        pred = np.zeros((h, w, z), dtype=np.int64)
        for z0 in range(0, z, batch_size):
            z1 = min(z, z0 + batch_size)
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(v.image[..., z0:z1], -1, 0)))
            x = resize_slice(x.float()[:, None].to(device), size)
            with torch.no_grad():
                logits = predict_logits(x)
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                cls = ids[logits.argmax(dim=1)]  # (B, H, W)
            pred[..., z0:z1] = cls.permute(1, 2, 0).cpu().numpy()
        out[v.case_id] = pred
        emit(progress, TaskAdvanced(task, 1, {"case": v.case_id}))
    emit(progress, TaskFinished(task))
    return out


def _save_prediction(
    directory: str | Path, case_id: str, pred: np.ndarray, affine: np.ndarray
) -> Path:
    """Write ``<case_id>_pred.nii.gz`` (uint8, or int16 for ids above 255) with ``affine``."""

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if int(pred.max(initial=0)) < 256 else np.int16
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id)
    path = directory / f"{safe}_pred.nii.gz"
    img = nib.Nifti1Image(pred.astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def score_predictions(
    name: str,
    method: str,
    predictions: Mapping[str, np.ndarray],
    val: Sequence[Volume],
    labels: Mapping[int, str],
    *,
    history: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    save_predictions: str | Path | None = None,
) -> SegmentationResult:
    """Score predicted label maps against labelled volumes (usable for any segmenter's output).

    Args:
        name: display name of the model.
        method: how the predictions were made (``linear_probe``, ``finetune``, ...).
        predictions: case id -> integer ``(H, W, Z)`` label map in the dataset's ids.
        val: the labelled volumes, one per case id of ``predictions``.
        labels: organ id -> name.
        history, config, info: stored as given.
        save_predictions: directory for ``<case_id>_pred.nii.gz`` written with ``Volume.affine``.

    Returns:
        A :class:`SegmentationResult`: ``dice[organ]`` is the mean of ``per_volume[case][organ]``
        over the cases where the organ is present; ``mean_dice`` the mean of the non-``None``
        ``dice`` values; ``mean_dice_present`` the mean over cases of each case's mean over its
        present organs.

    Raises:
        DataError: a validation case without a prediction or a label map.
    """
    organs = [labels[k] for k in sorted(labels)]
    per_volume: dict[str, dict[str, float | None]] = {}
    absent: dict[str, list[str]] = {}
    fp: dict[str, dict[str, int]] = {}
    for v in val:
        if v.case_id not in predictions:
            raise DataError(f"no prediction for validation case '{v.case_id}'")
        if v.label is None:
            raise DataError(f"validation case '{v.case_id}' has no label map to score against")
        pred = predictions[v.case_id]
        scores = dice_per_organ(pred, np.asarray(v.label), labels)
        per_volume[v.case_id] = {o: s["dice"] for o, s in scores.items()}
        absent[v.case_id] = [o for o, s in scores.items() if not s["present"]]
        fp[v.case_id] = {o: s["predicted_voxels"] for o, s in scores.items() if not s["present"]}
        if save_predictions is not None:
            _save_prediction(save_predictions, v.case_id, pred, v.affine)
    dice: dict[str, float | None] = {}
    for o in organs:
        vals = [x for d in per_volume.values() if (x := d[o]) is not None]
        dice[o] = float(np.mean(vals)) if vals else None
    known = [d for d in dice.values() if d is not None]
    mean_dice = float(np.mean(known)) if known else float("nan")
    vol_means = [
        float(np.mean(p))
        for d in per_volume.values()
        if (p := [x for x in d.values() if x is not None])
    ]
    mean_present = float(np.mean(vol_means)) if vol_means else float("nan")
    return SegmentationResult(
        checkpoint=name,
        method=method,
        mean_dice=mean_dice,
        mean_dice_present=mean_present,
        dice=dice,
        per_volume=per_volume,
        absent=absent,
        absent_predicted_voxels=fp,
        history=list(history or []),
        config=dict(config or {}),
        info=dict(info or {}),
    )


def _segmentation_losses(
    num_classes: int, dice_loss: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy on ``(B, K, S, S)`` logits vs ``(B, S, S)`` indices, plus soft Dice if asked."""
    dice = None
    if dice_loss:
        dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, target)
        if dice is not None:
            loss = loss + dice(logits, target[:, None])
        return loss

    return loss_fn


# ----------------------------------------------------------------------------------------------
# The probe.


def bilinear_matrix(n_in: int, n_out: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``(n_out, n_in)`` matrix of 1-D linear resampling (``align_corners=False``).

    Bilinear upsampling is separable: ``F.interpolate(x, (S, S), mode="bilinear")`` equals
    ``A_h @ x @ A_w.T`` with these matrices (to float rounding). As two small GEMMs its backward
    is about twice as fast on CPU as ``upsample_bilinear2d_backward``, which dominates a cached
    probe epoch.
    """
    eye = torch.eye(n_in, device=device)[None]  # (1, n_in, n_in): one basis signal per channel
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def forward_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``backbone.forward_features(x)``: ``(B, 1, S, S) -> (B, C, S/os, S/os)``."""
    fn = cast(Callable[[torch.Tensor], torch.Tensor], backbone.forward_features)
    return fn(x)


def frozen_backbone(
    backbone: nn.Module, output_stride: int = 32, device: str | torch.device = "cpu"
) -> nn.Module:
    """A frozen copy of ``backbone``: deep-copied, dilated to ``output_stride``, eval mode, no grads.

    Args:
        backbone: any module with ``forward_features(x) -> (B, C, h, w)`` (and ``dilate(os)`` when
            ``output_stride`` differs from its ``stride``, default 32).
        output_stride: 8, 16 or 32.
        device: where the copy lives.

    Raises:
        ConfigError: dilation requested from a backbone without ``dilate``.
    """
    bb = copy.deepcopy(backbone)
    if output_stride != getattr(bb, "stride", 32):
        dilate = getattr(bb, "dilate", None)
        if dilate is None:
            raise ConfigError(
                f"output_stride {output_stride} needs a backbone with dilate(); "
                f"{type(backbone).__name__} has none"
            )
        dilate(output_stride)
    bb.to(device).eval()
    bb.requires_grad_(False)
    return bb


def encode_slices(
    backbone: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    *,
    out: torch.Tensor | np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    task: str = "encode",
) -> torch.Tensor | np.ndarray:
    """Final feature maps of ``(N, 1, S, S)`` slices, batch by batch under ``no_grad``.

    Args:
        backbone: a frozen backbone (see :func:`frozen_backbone`).
        images: ``(N, 1, S, S)`` float32 slices (any device).
        batch_size: slices per forward pass.
        out: optional preallocated ``(N, C, h, w)`` float32 tensor or ``np.memmap`` to fill.
        progress: receives ``TaskStarted/TaskAdvanced/TaskFinished`` for ``task``.

    Returns:
        ``out``, or a new CPU float32 tensor ``(N, C, h, w)``.
    """
    device = next(iter(backbone.parameters())).device
    n = images.shape[0]
    emit(progress, TaskStarted(task, total=n, description=f"encoding {n} slices"))
    chunks = []
    for i in range(0, n, batch_size):
        with torch.no_grad():
            f = forward_features(backbone, images[i : i + batch_size].to(device)).float().cpu()
        if out is None:
            chunks.append(f)
        elif isinstance(out, np.ndarray):
            out[i : i + f.shape[0]] = f.numpy()
        else:
            out[i : i + f.shape[0]] = f
        emit(progress, TaskAdvanced(task, f.shape[0]))
    emit(progress, TaskFinished(task))
    return torch.cat(chunks) if out is None else out


def linear_probe(
    backbone: nn.Module,
    train: Sequence[Volume],
    val: Sequence[Volume],
    labels: Mapping[int, str],
    cfg: ProbeConfig | None = None,
    *,
    name: str = "model",
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    save_predictions: str | Path | None = None,
) -> SegmentationResult:
    """Train a 1×1-conv probe on a frozen backbone and score it per organ in 3D (see module doc).

    Args:
        backbone: any module with ``forward_features(x) -> (B, C, h, w)`` and ``dilate(os)``
            (e.g. :class:`~collapsekit.models.backbone.Backbone`); it is copied, never modified.
        train: labelled training volumes (slices in ``Volume.slices`` are used).
        val: labelled validation volumes (every slice is predicted).
        labels: organ id -> name (``BTCV_LABELS`` for BTCV); the classes are 0 plus these ids.
        cfg: a :class:`ProbeConfig` (defaults when ``None``).
        name: display name stored in the result.
        device: torch device for the backbone and the head.
        progress: receives encoding, per-epoch (``loss``) and prediction events.
        save_predictions: directory for ``<case_id>_pred.nii.gz`` label maps written with each
            validation volume's ``affine``.

    Returns:
        A :class:`SegmentationResult` with per-organ, per-volume and mean Dice.

    Raises:
        DataError: a case without labels, image/label shape mismatch, label values outside the
            class set, an empty split, a backbone that cannot encode 1-channel slices.
        ConfigError: dilation requested from a backbone without ``dilate``.
    """
    cfg = cfg or ProbeConfig()
    dev = torch.device(device)
    _check_volumes(train, val, labels, what="linear probe")
    train_used = _select_fraction(train, cfg.label_fraction, cfg.seed)
    bb = frozen_backbone(backbone, cfg.output_stride, dev)
    feat_shape = _check_encodes(
        lambda x: forward_features(bb, x),
        cfg.image_size,
        dev,
        getattr(backbone, "in_channels", None),
    )
    num_classes = len(labels) + 1
    images, targets = _training_slices(train_used, labels, cfg.image_size)
    n = images.shape[0]

    gen = torch.Generator().manual_seed(cfg.seed)
    head = LinearHead(feat_shape[0], num_classes).to(dev)
    up_h = bilinear_matrix(feat_shape[1], cfg.image_size, dev)
    up_w = bilinear_matrix(feat_shape[2], cfg.image_size, dev)
    loss_fn = _segmentation_losses(num_classes, cfg.dice_loss)
    steps = cfg.epochs * len(_batches(n, cfg.batch_size, None))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))

    tmpdir: str | None = None
    cache_path: Path | None = None
    features: torch.Tensor | np.ndarray | None = None
    cache_bytes = 0
    t0 = time.perf_counter()
    try:
        if cfg.caches_features:
            if cfg.cache == "disk":
                root = cfg.cache_dir or (tmpdir := tempfile.mkdtemp(prefix="collapsekit-probe-"))
                Path(root).mkdir(parents=True, exist_ok=True)
                cache_path = Path(root) / f"probe-features-{time.time_ns()}.npy"
                features = np.lib.format.open_memmap(
                    cache_path, mode="w+", dtype=np.float32, shape=(n, *feat_shape)
                )
            features = encode_slices(
                bb, images, cfg.batch_size, out=features, progress=progress, task="probe/encode"
            )
            cache_bytes = int(features.nbytes)
            del images  # only the features are needed from here on
        encode_s = time.perf_counter() - t0

        history: list[dict[str, Any]] = []
        emit(progress, TaskStarted("probe/train", total=cfg.epochs, description=f"probing {name}"))
        t_train = time.perf_counter()
        for epoch in range(cfg.epochs):
            t_epoch = time.perf_counter()
            head.train()
            total, count = 0.0, 0
            for idx in _batches(n, cfg.batch_size, gen):
                y = targets[idx].long().to(dev)
                if features is not None:
                    if isinstance(features, np.ndarray):
                        f = torch.from_numpy(np.asarray(features[idx.numpy()]))
                    else:
                        f = features[idx]
                    f = f.to(dev)
                else:
                    x = images[idx].to(dev)
                    if cfg.augment:
                        x, y = _augment(x, y, gen)
                    with torch.no_grad():
                        f = forward_features(bb, x).float()
                logits = up_h @ head(f) @ up_w.T  # (B, K, h, w) -> (B, K, S, S), bilinear
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            rec = {
                "epoch": epoch + 1,
                "loss": total / count,
                "lr": float(opt.param_groups[0]["lr"]),
                "seconds": time.perf_counter() - t_epoch,
            }
            history.append(rec)
            emit(progress, TaskAdvanced("probe/train", 1, {"loss": rec["loss"]}))
        emit(progress, TaskFinished("probe/train", {"loss": history[-1]["loss"]}))
        train_s = time.perf_counter() - t_train
    finally:
        del features
        if cache_path is not None:
            cache_path.unlink(missing_ok=True)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    head.eval()
    t_pred = time.perf_counter()

    def predict_logits(x: torch.Tensor) -> torch.Tensor:
        return head(forward_features(bb, x).float())

    predictions = _predict_volumes(
        predict_logits,
        val,
        labels,
        cfg.image_size,
        cfg.batch_size,
        dev,
        task="probe/predict",
        progress=progress,
    )
    info = {
        "encode_s": encode_s,
        "train_s": train_s,
        "predict_s": time.perf_counter() - t_pred,
        "cache_bytes": cache_bytes,
        "feature_shape": list(feat_shape),
        "train_slices": n,
        "train_cases": [v.case_id for v in train_used],
    }
    return score_predictions(
        name,
        "linear_probe",
        predictions,
        val,
        labels,
        history=history,
        config=asdict(cfg),
        info=info,
        save_predictions=save_predictions,
    )
