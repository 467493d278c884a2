"""Prediction of whole volumes, slice by slice, back at native resolution; NIfTI output.

Every slice of each volume is predicted (including those the data layer marked "no body": the
evaluation must not depend on that heuristic); logits are bilinearly upsampled straight to the
native in-plane size ``(H, W)``, argmaxed, and stacked back into an ``(H, W, Z)`` label map.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from collapsekit.data.slices import resize_slice, unletterbox
from collapsekit.data.volume import Volume
from collapsekit.errors import DataError
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit
from collapsekit.serialization import save_nifti

__all__ = ["check_encodes", "predict_volumes", "prediction_path", "save_prediction"]


def check_encodes(
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


def predict_volumes(
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
                logits = unletterbox(logits, h, w)  # crop the padding of a non-square slice
                cls = ids[logits.argmax(dim=1)]  # (B, H, W)
            pred[..., z0:z1] = cls.permute(1, 2, 0).cpu().numpy()
        out[v.case_id] = pred
        emit(progress, TaskAdvanced(task, 1, {"case": v.case_id}))
    emit(progress, TaskFinished(task))
    return out


def prediction_path(directory: str | Path, case_id: str) -> Path:
    """``<directory>/<case_id>_pred.nii.gz``, the case id made safe for a file name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id)
    return Path(directory) / f"{safe}_pred.nii.gz"


def save_prediction(
    directory: str | Path, case_id: str, pred: np.ndarray, affine: np.ndarray
) -> Path:
    """Write ``<case_id>_pred.nii.gz`` (uint8, or int16 for ids above 255) with ``affine``."""

    path = prediction_path(directory, case_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if int(pred.max(initial=0)) < 256 else np.int16
    img = nib.Nifti1Image(pred.astype(dtype), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(dtype)
    return save_nifti(img, path)
