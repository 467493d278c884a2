"""Per-organ 3D Dice of a predicted label map, with organs absent from the ground truth made explicit.

For one organ with ground-truth mask ``G`` and predicted mask ``P`` (whole volume, all slices):

    Dice = 2 |P ∩ G| / (|P| + |G|)

computed by MONAI (:func:`monai.metrics.compute_dice`, background excluded). When the organ is
absent from the ground truth (``|G| = 0``), Dice is undefined: MONAI returns NaN
(``ignore_empty=True``); we report ``{"dice": None, "present": False, "predicted_voxels": |P|}`` so
that a missing organ is never silently scored as 0 or 1 (BTCV validation cases without a
gallbladder or an adrenal gland are the usual example).

:func:`score_predictions` turns the label maps of any segmenter into a :class:`SegmentationResult`:
per organ, per volume, and the paper's mean Dice over organs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_dice

from collapsekit.data.volume import Volume
from collapsekit.errors import DataError, InputError
from collapsekit.evaluation.segmentation.predict import prediction_path, save_prediction
from collapsekit.outputs import writing

__all__ = ["SegmentationResult", "dice_per_organ", "score_predictions"]


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
            done = len(per_volume) - 1
            kept = f"{done} prediction file{'s' if done != 1 else ''} were written to {save_predictions}"
            with writing(prediction_path(save_predictions, v.case_id), kept=kept):
                save_prediction(save_predictions, v.case_id, pred, v.affine)
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
