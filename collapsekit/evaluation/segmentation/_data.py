"""Labelled slices for segmentation evaluation: checks, label subsets, class indices, batches.

Shared by the linear probe and fine-tuning (their dataset check is :mod:`collapsekit.data.validate`). Classes are ``0`` (background) plus the ids of
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
