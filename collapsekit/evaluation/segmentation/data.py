"""Labelled slices for segmentation evaluation: checks, label subsets, class indices, batches.

Shared by the linear probe and fine-tuning. Classes are ``0`` (background) plus the ids of
``labels`` (14 for BTCV), mapped to contiguous indices ``0..K-1``; slices are resized with the one
slice resize (:func:`~collapsekit.data.slices.resize_slice`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from collapsekit.data.slices import resize_label, resize_slice
from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError, DataError

__all__ = [
    "check_options",
    "check_volumes",
    "label_values",
    "select_fraction",
    "class_lut",
    "training_slices",
    "epoch_batches",
    "augment_slices",
]


def check_options(cfg: Any) -> None:
    """Validate the options the probe and fine-tuning share (epochs, lr, sizes, label fraction)."""
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


def check_volumes(
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
            found = label_values(lab)
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


def label_values(lab: np.ndarray) -> set[int]:
    """Distinct values of an integer array (bincount is far faster than unique on 10⁷ voxels)."""
    lab = lab.astype(np.int64, copy=False)
    lo = int(lab.min())
    if lo < 0:
        return {int(x) for x in np.unique(lab)}
    return {int(x) for x in np.flatnonzero(np.bincount(lab.ravel()))}


def select_fraction(train: Sequence[Volume], fraction: float, seed: int) -> list[Volume]:
    """A deterministic subset of ``max(1, round(fraction · n))`` volumes (seeded permutation)."""
    if fraction >= 1:
        return list(train)
    order = sorted(range(len(train)), key=lambda i: train[i].case_id)
    perm = np.random.default_rng(seed).permutation(len(order))
    n = max(1, round(fraction * len(train)))
    keep = sorted(order[i] for i in perm[:n])
    return [train[i] for i in keep]


def class_lut(labels: Mapping[int, str], max_value: int) -> np.ndarray:
    """Look-up table dataset id -> contiguous class index (0 background, organs 1..K-1)."""
    ids = sorted(int(k) for k in labels)
    lut = np.zeros(max(max_value, ids[-1]) + 1, dtype=np.uint8)
    for i, k in enumerate(ids):
        lut[k] = i + 1
    return lut


def training_slices(
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
        cls = torch.from_numpy(class_lut(labels, int(lab.max()))[lab])
        images.append(resize_slice(img.float()[:, None], size))
        targets.append(resize_label(cls, size))
    if not images:
        raise DataError(
            "no usable training slices: every training volume has an empty `slices` list"
        )
    return torch.cat(images), torch.cat(targets)


def epoch_batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches of a (shuffled) epoch; a trailing batch of one joins the previous one so
    that BatchNorm in train mode always sees more than one value per channel."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = list(torch.split(order, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    # Sorted within a batch (same set, same loss): sequential reads from a disk cache.
    return [c.sort().values for c in chunks]


def augment_slices(
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
