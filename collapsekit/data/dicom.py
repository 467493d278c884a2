"""DICOM series: find them beside NIfTI files, check their geometry, read one as a HU volume.

A series is the set of CT slices that share a ``SeriesInstanceUID`` inside one directory (usually a
directory holds exactly one series; several are told apart by that UID). Slices whose UID is blank
or absent (anonymised exports) form one series when they are alone in their directory and agree as
one series must; else the conflict is named. Slices whose ``Modality`` is not CT are refused unless
asked for; missing Rescale Slope/Intercept are noted (:attr:`DicomSeries.notes`). Compressed
transfer syntaxes (JPEG 2000, JPEG-LS, JPEG lossless, RLE) are decoded by pydicom's pylibjpeg
plugins, dependencies of collapsekit; a slice with no installed decoder is named. Headers are read with
pydicom to find and check series; pixels, the Rescale Slope/Intercept and the affine come from
MONAI's :class:`~monai.data.PydicomReader`, so that, like the NIfTI path, the volume is

    HU = RescaleSlope * stored + RescaleIntercept    (per slice)

on a voxel grid whose world (RAS, mm) coordinates are ``A @ (i, j, k, 1)`` with, from the first slice
``P0 = ImagePositionPatient``, ``ImageOrientationPatient = (r, c)`` (row and column direction
cosines, LPS) and ``PixelSpacing = (dr, dc)`` (between rows, between columns)::

    A_LPS = [c*dr | r*dc | (P_last - P0)/(n - 1) | P0],   A_RAS = diag(-1, -1, 1, 1) @ A_LPS

(nibabel's "DICOM orientation" formula; axes ``i`` along columns after MONAI's row/column swap).

Slices are ordered by their position along the slice normal ``n = r x c``, ``ImagePositionPatient
. n`` -- never by file name, and not by ``InstanceNumber``, which MONAI 1.6's reader sorts by
(scanners number slices head-first or feet-first, and re-exports renumber them). The reader is
handed the series' datasets renumbered in memory by that position (files are never written), so
its stacker, rescale and affine code see the slices in position order.

Everything a series needs is checked from the headers first, so a bad file is named in one line
(:class:`~collapsekit.errors.DataError`): unreadable or truncated files, non-image objects such as
structured reports, multi-frame or colour images, a missing Pixel Spacing / Image Position /
Image Orientation, slices of different size, orientation or pixel spacing in one series, two
slices at one position, unevenly spaced slices (a missing slice), single-slice series and non-CT
modalities.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.data import PydicomReader
from nibabel.orientations import io_orientation
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder

from collapsekit.data.volume import Volume
from collapsekit.errors import DataError

__all__ = ["DicomSeries", "find_series", "read_series", "series_summary"]

#: File suffixes taken as DICOM even without the ``DICM`` preamble (a cut file must not be skipped).
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Media Storage Directory (DICOMDIR): an index of a DICOM CD, not a slice; skipped.
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
#: Header tags needed to find and check a series (read with ``stop_before_pixels``).
_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Modality",
    "RescaleSlope",
    "RescaleIntercept",
]
#: Modalities read as CT (HU) without being asked.
CT_MODALITIES = frozenset({"CT"})
_NII = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
#: Tolerance on direction cosines (absolute) and pixel spacings (relative) within one series.
_TOL = 1e-3
#: Relative tolerance on the gaps between slice positions: scanners round positions (to 0.01 mm,
#: ~1 % of a 0.625 mm gap); a missing slice doubles a gap.
_GAP_TOL = 0.1


@dataclass(frozen=True)
class DicomSeries:
    """One checked DICOM series on disk.

    Attributes:
        directory: the directory holding its files.
        uid: its ``SeriesInstanceUID``; ``""`` when the UID is blank or absent (anonymised series:
            the directory's files with blank UIDs are then read as one series, see
            :func:`list_series`).
        files: its slices, ordered by position along the slice normal (inferior first for an
            axial series in the usual orientation).
        shape: ``(Rows, Columns)`` of every slice.
        pixel_spacing: ``(dr, dc)`` in mm: between rows, between columns (DICOM order).
        slice_spacing: distance in mm between neighbouring slice positions along the normal.
        notes: what ``data check`` tells about it: a blank ``SeriesInstanceUID`` read as one
            series, slices without Rescale Slope/Intercept (stored values taken as HU).
    """

    directory: Path
    uid: str
    files: tuple[Path, ...]
    shape: tuple[int, int]
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    notes: tuple[str, ...] = ()


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is taken for a DICOM file: a ``.dcm``/``.dicom`` name, or ``DICM`` at byte 128.

    Files with another name and no preamble (a README, a spreadsheet, a cut file without suffix)
    are not DICOM and are ignored by :func:`find_series`.
    """
    if path.name.startswith(".") or _NII.search(path.name):
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        return bool(pydicom.misc.is_dicom(path))
    except OSError:
        return False


def _reason(e: BaseException) -> str:
    """A foreign exception as one line: ``Type: message``."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _header(path: Path) -> pydicom.Dataset | None:
    """The header of one file (no pixels), or ``None`` for a DICOMDIR index."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        raise DataError(
            f"{path} is not a DICOM file (no 'DICM' preamble and no DICOM header); remove it or "
            "give it another suffix than .dcm"
        ) from None
    except Exception as e:  # pydicom raises many types on cut or damaged headers
        raise DataError(
            f"cannot read the DICOM header of {path} ({_reason(e)}); truncated or corrupt file?"
        ) from None
    sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "") if ds.file_meta else "")
    if path.name.upper() == "DICOMDIR" or sop == _DICOMDIR_UID:
        return None
    return ds


def _check_slice(path: Path, ds: pydicom.Dataset) -> None:
    """A single-frame grayscale image with the geometry tags, or a DataError naming ``path``."""
    if "Rows" not in ds or "Columns" not in ds:
        meta = getattr(ds, "file_meta", None)
        sop = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
        name = sop.name if isinstance(sop, pydicom.uid.UID) else ""
        if not name or "Image" in name:  # an image object cut short
            raise DataError(
                f"{path} has an incomplete DICOM header (no Rows/Columns); truncated or corrupt file?"
            )
        raise DataError(
            f"{path} is a {name} object, not an image (no pixel data); move it out of {path.parent}"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DataError(
            f"{path} is a multi-frame DICOM image ({ds.NumberOfFrames} frames); only series of "
            "single-slice files are read (convert it, e.g. with dcm2niix, to NIfTI)"
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DataError(f"{path} is a colour image, not a grayscale CT slice")
    for tag, n in (
        ("PixelSpacing", 2),
        ("ImagePositionPatient", 3),
        ("ImageOrientationPatient", 6),
    ):
        values = _floats(ds.get(tag))
        if values is None or values.size != n:
            raise DataError(
                f"{path} has no valid {tag} (a CT slice needs it to place its pixels in space)"
            )
        if not np.all(np.isfinite(values)):
            raise DataError(f"{path} has a non-finite {tag}: {values.tolist()}")
    if _floats(ds.PixelSpacing).min() <= 0:  # type: ignore[union-attr]
        raise DataError(f"{path} has a non-positive PixelSpacing {list(ds.PixelSpacing)}")


def _check_modality(path: Path, ds: pydicom.Dataset, allow_non_ct: bool) -> None:
    """A CT slice (``Modality`` CT), or a DataError: other modalities are not in HU."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality in CT_MODALITIES or allow_non_ct:
        return
    what = f"Modality {modality}" if modality else "no Modality"
    raise DataError(
        f"{path} has {what}, not CT: its values are not Hounsfield units and the HU window "
        "would be meaningless; move it out of the dataset (or pass allow_non_ct=True to read "
        "it anyway)"
    )


def _floats(value: Any) -> np.ndarray | None:
    """A DICOM decimal-string value (one number or several) as float64, ``None`` when empty."""
    if value is None or value == "":
        return None
    seq = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return np.asarray([float(v) for v in seq], dtype=np.float64)


def _normal(iop: np.ndarray) -> np.ndarray:
    """Unit slice normal ``r x c`` from ImageOrientationPatient ``(r, c)``."""
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def _build_series(directory: Path, uid: str, items: list[tuple[Path, Any]]) -> DicomSeries:
    """Check that the slices of one series agree and order them along the slice normal."""
    name = uid or "(blank SeriesInstanceUID)"
    first_path, first = items[0]
    shape = (int(first.Rows), int(first.Columns))
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    spacing = np.asarray(first.PixelSpacing, dtype=np.float64)
    if abs(np.linalg.norm(np.cross(iop[:3], iop[3:])) - 1.0) > 1e-2:
        raise DataError(
            f"{first_path} has an ImageOrientationPatient {list(iop)} whose row and column "
            "directions are not orthogonal unit vectors"
        )
    for path, ds in items[1:]:
        other = (int(ds.Rows), int(ds.Columns))
        if other != shape:
            raise DataError(
                f"{path} is {other[0]}x{other[1]} pixels but {first_path} of the same series "
                f"({name}) is {shape[0]}x{shape[1]}; a series must have one slice size"
            )
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float), iop, atol=_TOL):
            raise DataError(
                f"{path} has another ImageOrientationPatient than {first_path} of the same series ({name})"
            )
        if not np.allclose(np.asarray(ds.PixelSpacing, float), spacing, rtol=_TOL):
            raise DataError(
                f"{path} has PixelSpacing {list(ds.PixelSpacing)} but {first_path} of the same "
                f"series ({name}) has {list(spacing)}"
            )
    if len(items) < 2:
        raise DataError(
            f"series {name} in {directory} has a single slice ({first_path}); a CT volume needs at least 2"
        )
    normal = _normal(iop)
    pos = np.array([np.dot(np.asarray(ds.ImagePositionPatient, float), normal) for _, ds in items])
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    files = tuple(items[i][0] for i in order)
    gaps = np.diff(pos)
    if gaps.min() <= _TOL * max(float(spacing.min()), 1.0):
        i = int(np.argmin(gaps))
        raise DataError(
            f"{files[i]} and {files[i + 1]} of series {name} lie at the same position "
            f"({pos[i]:.3f} mm along the slice normal); two acquisitions in one series?"
        )
    step = float(np.median(gaps))
    if np.abs(gaps - step).max() > _GAP_TOL * step:
        i = int(np.argmax(np.abs(gaps - step)))
        raise DataError(
            f"the slices of series {name} in {directory} are not evenly spaced: {gaps[i]:.3f} mm "
            f"between {files[i].name} and {files[i + 1].name}, {step:.3f} mm elsewhere (a missing slice?)"
        )
    notes = []
    if not uid:
        notes.append(
            f"{directory}: {len(files)} DICOM slices with a blank SeriesInstanceUID agree in "
            "size, orientation, spacing and positions; read as one series"
        )
    bare = [p for p, ds in items if "RescaleSlope" not in ds or "RescaleIntercept" not in ds]
    if bare:
        notes.append(
            f"{directory}: {len(bare)} of {len(files)} slices (e.g. {bare[0].name}) have no "
            "RescaleSlope/RescaleIntercept; their stored values are taken as HU"
        )
    return DicomSeries(
        directory=directory,
        uid=uid,
        files=files,
        shape=shape,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slice_spacing=step,
        notes=tuple(notes),
    )


def list_series(directory: str | Path, *, allow_non_ct: bool = False) -> list[DicomSeries]:
    """The checked DICOM series whose files lie directly in ``directory`` (not recursive).

    Files are grouped by ``SeriesInstanceUID``; DICOMDIR index files are skipped; non-DICOM files
    (see :func:`is_dicom_file`) are ignored. Files whose UID is blank or absent (anonymisers blank
    UIDs) form one series with ``uid == ""`` when they are the only series of the directory and
    agree as one series must (size, orientation, spacing, distinct evenly spaced positions; its
    :attr:`DicomSeries.notes` says so); else they are refused, naming the conflict.

    Args:
        directory: the directory.
        allow_non_ct: also accept slices whose ``Modality`` is not CT (or absent); by default they
            are refused, since their values are not Hounsfield units.

    Returns:
        The series sorted by UID; empty when the directory holds no DICOM file.

    Raises:
        DataError: a file that cannot be read or is not a usable CT slice, or a series whose
            slices disagree (size, orientation, pixel spacing, positions); the message names the file.
    """
    directory = Path(directory)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_file() and is_dicom_file(p)):
        try:
            ds = _header(path)
            if ds is None:
                continue
            _check_slice(path, ds)
            _check_modality(path, ds, allow_non_ct)
            uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - pydicom converts values lazily, on first access
            raise DataError(
                f"{path} has a malformed DICOM header ({_reason(e)}); truncated or corrupt file?"
            ) from None
        groups.setdefault(uid, []).append((path, ds))
    if "" in groups and len(groups) > 1:
        blank = groups[""]
        uids = ", ".join(u for u in sorted(groups) if u)
        raise DataError(
            f"{len(blank)} DICOM files in {directory} (e.g. {blank[0][0].name}) have a blank "
            f"SeriesInstanceUID beside series {uids}: which series they belong to cannot be "
            "told; move them into a directory of their own"
        )
    return [_build_series(directory, uid, items) for uid, items in sorted(groups.items())]


def find_series(root: str | Path, *, allow_non_ct: bool = False) -> list[DicomSeries]:
    """Every DICOM series under ``root`` (recursively), as :func:`list_series` finds them per directory.

    Hidden directories (``.name``) are skipped. Only headers are read. ``allow_non_ct``: see
    :func:`list_series`.
    """
    root = Path(root)
    dirs = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    found: list[DicomSeries] = []
    for d in dirs:
        rel = d.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if any(p.is_file() and is_dicom_file(p) for p in d.iterdir()):
            found.extend(list_series(d, allow_non_ct=allow_non_ct))
    return found


def series_fingerprint(directory: str | Path) -> list[list[Any]]:
    """``[[name, size, mtime_ns, ctime_ns, inode], ...]`` of every non-hidden file directly in
    ``directory`` (the ctime and inode catch a rewrite that keeps size and mtime).

    Used in the preprocessed-volume cache key of a series: adding, removing, renaming or rewriting
    any file of the directory (a slice of this series or of another one sharing the directory)
    changes it, so a stale volume is never read back. Only ``stat`` is called.
    """
    out: list[list[Any]] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        st = entry.stat()
        out.append([entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return out


def _pick(directory: Path, uid: str | None) -> DicomSeries:
    # The modality was checked when the dataset was discovered; a named series is read as asked.
    found = list_series(directory, allow_non_ct=True)
    if not found:
        raise DataError(f"{directory} holds no DICOM files")
    if uid is None:
        if len(found) > 1:
            uids = ", ".join(s.uid for s in found)
            raise DataError(f"{directory} holds {len(found)} DICOM series ({uids}); name one")
        return found[0]
    for s in found:
        if s.uid == uid:
            return s
    raise DataError(f"{directory} holds no DICOM series with SeriesInstanceUID {uid}")


def _position(ds: Any) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    return float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), _normal(iop)))


#: What to install when a compressed slice has no decoder (the dependencies collapsekit declares).
DECODER_PACKAGES = "pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg pylibjpeg-rle"


def _missing_decoder(files: tuple[Path, ...]) -> str | None:
    """A one-line message when a slice's transfer syntax has no installed decoder, else None."""
    for f in files:
        try:
            meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
            syntax = pydicom.uid.UID(str(meta.TransferSyntaxUID))
        except Exception:  # noqa: BLE001 - an unreadable header is _unreadable_slice's to name
            continue
        if not syntax.is_compressed:
            continue
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return f"DICOM slice {f} is {syntax.name} ({syntax}), which pydicom cannot decode"
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            return (
                f"DICOM slice {f} is {syntax.name} ({syntax}) and no decoder is installed "
                f"({missing}); pip install {DECODER_PACKAGES}"
            )
    return None


def _unreadable_slice(files: tuple[Path, ...]) -> tuple[Path, str] | None:
    """The first file whose pixels pydicom cannot decode, with the reason (only on the error path)."""
    for f in files:
        try:
            pydicom.dcmread(f).pixel_array  # noqa: B018 - decoding is the check
        except Exception as e:  # noqa: BLE001 - any failure names the file
            return f, _reason(e)
    return None


def read_series(directory: str | Path, uid: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one DICOM series as Hounsfield units with its world affine, like a NIfTI volume.

    Args:
        directory: the directory holding the series.
        uid: its ``SeriesInstanceUID``; may be omitted when the directory holds one series.

    Returns:
        ``(hu, affine)``: float32 ``(H, W, Z)`` with ``HU = slope * stored + intercept`` (each
        slice's Rescale Slope/Intercept), ``H`` along the row direction (columns of the DICOM
        image), ``Z`` ordered by position along the slice normal; ``affine`` float64 ``(4, 4)``
        voxel -> RAS mm (see the module docstring), as MONAI's ``NibabelReader`` gives for NIfTI.

    Raises:
        DataError: a missing or bad file (named), a directory with no or several series and no
            ``uid``, a directory name MONAI's reader cannot list (glob characters ``*?[``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"DICOM series directory {directory} does not exist")
    series = _pick(directory, uid)
    if glob.has_magic(str(directory)):
        raise DataError(
            f"the DICOM series directory {directory} contains one of the characters * ? [ "
            "which MONAI's DICOM reader takes for a file pattern; rename the directory"
        )
    prefix = re.escape(os.path.join(str(directory), ""))
    names = "|".join(re.escape(f.name) for f in series.files)
    reader = PydicomReader(fname_regex=f"{prefix}(?:{names})\\Z")
    try:
        datasets = reader.read(str(directory))
        if len(datasets) != len(series.files):
            raise ValueError(f"read {len(datasets)} of {len(series.files)} slices")
        # MONAI stacks by InstanceNumber; number them by position (in memory only).
        for rank, i in enumerate(np.argsort([_position(ds) for ds in datasets], kind="stable")):
            datasets[i].InstanceNumber = rank + 1
        array, meta = reader.get_data(datasets)
    except Exception as e:  # noqa: BLE001 - translated into one line naming the file
        undecodable = _missing_decoder(series.files)
        if undecodable is not None:
            raise DataError(undecodable) from None
        bad = _unreadable_slice(series.files)
        if bad is not None:
            raise DataError(
                f"cannot read the pixels of DICOM slice {bad[0]} ({bad[1]}); truncated or corrupt file?"
            ) from None
        raise DataError(
            f"cannot read DICOM series {series.uid} in {directory} ({_reason(e)})"
        ) from None
    hu = np.asarray(array, dtype=np.float32)
    if hu.shape != (series.shape[1], series.shape[0], len(series.files)):
        raise DataError(
            f"DICOM series {series.uid} in {directory} was read with shape {hu.shape}; expected "
            f"{(series.shape[1], series.shape[0], len(series.files))}"
        )
    return hu, np.asarray(meta["affine"], dtype=np.float64)


def series_summary(volumes: list[Volume]) -> dict[str, Any]:
    """What ``data check`` reports about DICOM series, from their volumes as read.

    Args:
        volumes: volumes read from DICOM series (``source_affine`` is the series' affine) with no
            resampling, as ``check_dataset`` reads them.

    Returns:
        ``{"series": n, "slices": DICOM slices in all, "spacing": {"min": [x, y, z], "max": [..]}}``
        with the spacing in mm along the R, A, S axes (in-plane pixel spacing and slice spacing of
        an axial series), rounded to 1e-4 mm; ``spacing`` is ``None`` when there is no series.
    """
    slices, spacing = 0, []
    for v in volumes:
        affine = np.asarray(v.source_affine if v.source_affine is not None else v.affine)
        ornt = io_orientation(affine)  # source axis i lies along RAS axis ornt[i, 0]
        sp = np.linalg.norm(affine[:3, :3], axis=0)
        ras = np.empty(3)
        ras[ornt[:, 0].astype(int)] = sp
        spacing.append(ras)
        slices += int(v.image.shape[int(ornt[2, 0])])
    return {
        "series": len(volumes),
        "slices": slices,
        "spacing": None
        if not spacing
        else {
            "min": [round(float(x), 4) for x in np.min(spacing, axis=0)],
            "max": [round(float(x), 4) for x in np.max(spacing, axis=0)],
        },
    }
