"""Per-organ 3D Dice of a predicted label map, with organs absent from the ground truth made explicit.

For one organ with ground-truth mask ``G`` and predicted mask ``P`` (whole volume, all slices):

    Dice = 2 |P ∩ G| / (|P| + |G|)

computed by MONAI (:func:`monai.metrics.compute_dice`, background excluded). When the organ is
absent from the ground truth (``|G| = 0``), Dice is undefined: MONAI returns NaN
(``ignore_empty=True``); we report ``{"dice": None, "present": False, "predicted_voxels": |P|}`` so
that a missing organ is never silently scored as 0 or 1 (BTCV validation cases without a
gallbladder or an adrenal gland are the usual example).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice

from collapsekit.errors import InputError

__all__ = ["dice_per_organ", "encode_classes"]


def _as_int_tensor(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype.is_floating_point or t.dtype.is_complex:
        raise InputError(f"expected an integer {what} label map, got dtype {t.dtype}")
    if t.ndim != 3:
        raise InputError(f"expected an (H, W, Z) {what} label map, got shape {tuple(t.shape)}")
    return t.long()


def encode_classes(
    label: np.ndarray | torch.Tensor, labels: Mapping[int, str], what: str = "label"
) -> torch.Tensor:
    """Map label ids to contiguous class indices: background 0 -> 0, ``sorted(labels)[i]`` -> ``i + 1``.

    Args:
        label: integer label map of any shape.
        labels: organ id -> organ name (ids ≥ 1; 0 is background).
        what: name used in error messages.

    Returns:
        An int64 tensor of the same shape with values in ``0 .. len(labels)``.

    Raises:
        InputError: a value is negative or not a key of ``labels`` (and not 0).
    """
    t = torch.as_tensor(label).long()
    ids = sorted(int(k) for k in labels)
    if ids and ids[0] < 1:
        raise InputError(f"organ ids must be ≥ 1 (0 is background), got {ids[0]}")
    hi = max(ids, default=0)
    t_min = int(t.min()) if t.numel() else 0
    t_max = int(t.max()) if t.numel() else 0
    lut = torch.full((max(hi, t_max) + 1,), -1, dtype=torch.long)
    lut[0] = 0
    for i, k in enumerate(ids):
        lut[k] = i + 1
    if t_min < 0 or bool((lut[t.clamp(min=0)] < 0).any()):
        found = sorted({int(v) for v in torch.unique(t)} - {0, *ids})
        raise InputError(
            f"{what} contains values {found[:8]} outside the class set (0 and {ids[0] if ids else '-'}"
            f"..{hi})"
        )
    return lut[t]


def dice_per_organ(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    labels: Mapping[int, str],
) -> dict[str, dict[str, Any]]:
    """3D Dice of each organ between a predicted and a ground-truth label map.

    Args:
        pred: integer ``(H, W, Z)`` predicted label map (organ ids, 0 = background).
        label: integer ``(H, W, Z)`` ground-truth label map, same shape.
        labels: organ id -> organ name, e.g. ``BTCV_LABELS`` (13 organs).

    Returns:
        ``{organ_name: {"dice", "present", "label_voxels", "predicted_voxels"}}`` in id order.
        ``dice`` is a float in [0, 1] when the organ is present in ``label``, else ``None`` with
        ``present`` False; ``predicted_voxels`` then counts the false positives. Known values:
        identical maps give 1.0 for every present organ; disjoint masks give 0.0; a 4-voxel organ
        predicted on 2 of them plus 2 other voxels gives 2·2/(4+4) = 0.5.

    Raises:
        InputError: non-integer arrays, shapes that are not ``(H, W, Z)`` or differ, or values
            outside ``{0} ∪ labels``.
    """
    p = _as_int_tensor(pred, "predicted")
    g = _as_int_tensor(label, "ground-truth")
    if p.shape != g.shape:
        raise InputError(
            f"prediction shape {tuple(p.shape)} does not match label shape {tuple(g.shape)}"
        )
    if not labels:
        raise InputError("no organs given: labels must map at least one id to a name")
    pc = encode_classes(p, labels, "prediction")
    gc = encode_classes(g, labels, "ground truth")
    k = len(labels) + 1
    # Class-index inputs (B, 1, H, W, Z) with num_classes: MONAI builds one binary mask per class
    # at a time instead of a (K, H, W, Z) one-hot, which would not fit for 512² BTCV volumes.
    scores = compute_dice(
        y_pred=pc[None, None], y=gc[None, None], include_background=False, num_classes=k
    )[0]
    n_label = torch.bincount(gc.flatten(), minlength=k)
    n_pred = torch.bincount(pc.flatten(), minlength=k)
    out: dict[str, dict[str, Any]] = {}
    for i, organ_id in enumerate(sorted(labels)):
        d = float(scores[i])
        present = int(n_label[i + 1]) > 0
        out[labels[organ_id]] = {
            "dice": d if present and not math.isnan(d) else None,
            "present": present,
            "label_voxels": int(n_label[i + 1]),
            "predicted_voxels": int(n_pred[i + 1]),
        }
    return out
