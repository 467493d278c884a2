"""The two records the data layer passes around: a case on disk and a preprocessed volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CaseRecord", "Volume"]


@dataclass(frozen=True)
class CaseRecord:
    """One case of a dataset: an image file and optionally its label file.

    For the in-memory phantom, ``image`` is ``None`` and ``seed`` identifies the case.
    """

    case_id: str
    image: Path | None
    label: Path | None = None
    seed: int | None = None


@dataclass
class Volume:
    """A preprocessed CT volume, oriented RAS, axial slices on the last axis.

    Attributes:
        case_id: identifier of the case (file stem or phantom id).
        image: float32 ``(H, W, Z)`` intensities after the HU window, in [0, 1].
        label: integer ``(H, W, Z)`` label map (BTCV ids) or ``None``.
        affine: ``(4, 4)`` voxel-to-world affine of the preprocessed volume.
        source_affine: affine of the file as it was read (for writing predictions back).
        slices: indices along the last axis that hold enough body to be used.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    slices: np.ndarray
    source_affine: np.ndarray | None = None
    source_path: Path | None = None
