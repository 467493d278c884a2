"""The two records the data layer passes around: a case on disk and a preprocessed volume."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collapsekit.errors import DataError

__all__ = ["CaseRecord", "Volume", "radiological_view", "describe_path", "check_label_geometry"]

#: Largest difference (mm, and direction cosines times mm) between an image's and its label's
#: affine: files written by one tool from one grid agree to float32 rounding.
GEOMETRY_ATOL = 1e-3


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


def describe_path(p: Path) -> str:
    """What ``p`` is, for a message about a path that should be a regular file: ``"is a
    directory, not a file"``, ``"is a FIFO (named pipe), not a file"``, ``"is a character
    device, not a file"``, ... or ``"does not exist"``. Only ``stat`` is called: nothing is opened
    (reading a FIFO would block, ``/dev/zero`` never ends)."""
    try:
        mode = p.stat().st_mode
    except OSError:
        return "is a symlink to a missing file" if p.is_symlink() else "does not exist"
    for test, what in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return f"is {what}, not a file"
    return "is a regular file"


def check_label_geometry(volume: Volume, label_path: Path) -> None:
    """Raise :class:`DataError` when the label file's affine differs from its image's.

    A label map with the image's shape but another affine (a mirrored axis, a shifted origin)
    passes the shape check and puts every organ in the wrong place. Compared: the label file's
    header affine (nibabel, header only: no voxel is read) against ``volume.source_affine`` (the
    image as read), to :data:`GEOMETRY_ATOL`. Volumes without a ``source_affine`` are skipped.
    """
    if volume.source_affine is None:
        return
    import nibabel as nib

    try:
        lab = np.asarray(nib.load(str(label_path)).affine, dtype=np.float64)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - reading the voxels reports a bad file with its own message
        return
    img = np.asarray(volume.source_affine, dtype=np.float64)
    if lab.shape != (4, 4) or not np.allclose(lab, img, atol=GEOMETRY_ATOL, rtol=0):
        flips = [str(i) for i in range(3) if np.dot(lab[:3, i], img[:3, i]) < 0]
        what = f" (voxel axis {', '.join(flips)} mirrored)" if flips else ""
        raise DataError(
            f"label {label_path} of case {volume.case_id} has another affine than its image"
            f"{what}: its organs would not lie on the image's voxels; rewrite the label on "
            f"the image's grid (image affine {np.round(img, 3).tolist()}, label "
            f"{np.round(lab, 3).tolist()})"
        )
