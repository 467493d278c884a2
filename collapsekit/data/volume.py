"""The two records the data layer passes around: a case on disk and a preprocessed volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CaseRecord", "Volume", "radiological_view"]


@dataclass(frozen=True)
class CaseRecord:
    """One case of a dataset: an image file and optionally its label file.

    For the in-memory phantom, ``image`` is ``None`` and ``seed`` identifies the case. For a DICOM
    series, ``image`` is the directory holding its slices and ``series_uid`` its
    ``SeriesInstanceUID`` (several series may share a directory).
    """

    case_id: str
    image: Path | None
    label: Path | None = None
    seed: int | None = None
    series_uid: str | None = None


@dataclass
class Volume:
    """A preprocessed CT volume, oriented RAS, axial slices on the last axis.

    Attributes:
        case_id: identifier of the case (file stem or phantom id).
        image: float32 ``(H, W, Z)`` intensities after the HU window, in [0, 1].
        label: integer ``(H, W, Z)`` label map (BTCV ids) or ``None``.
        affine: ``(4, 4)`` voxel-to-world affine of the preprocessed volume.
        source_affine: affine of the file as it was read (for writing predictions back).
        slices: int64 indices along the last axis that hold enough body to be used.

    Volumes returned by ``load_volumes`` are shared with its cache: their arrays are read-only and
    stored in Fortran order, so each axial slice ``image[:, :, z]`` is contiguous in memory.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    slices: np.ndarray
    source_affine: np.ndarray | None = None
    source_path: Path | None = None


def radiological_view(slice_ras: np.ndarray) -> np.ndarray:
    """Turn an axial slice of a RAS volume ``(H, W)`` into the radiological display convention.

    A RAS slice ``volume.image[:, :, z]`` has rows running towards the patient's Right and columns
    towards Anterior. Radiologists look at an axial slice from the feet: anterior at the top and the
    patient's right on the left of the screen. The display is ``slice[::-1, ::-1].T``: display row
    ``r`` is ``y = W - 1 - r`` (anterior first) and display column ``c`` is ``x = H - 1 - c`` (right
    first). Works on any trailing-2D array (image or label).
    """
    return np.asarray(slice_ras)[::-1, ::-1].T
