"""From a NIfTI file, a DICOM series or a phantom case to a preprocessed :class:`~collapsekit.data.volume.Volume`.

The chain follows MONAI's BTCV recipe: ``NibabelReader`` (or ``PydicomReader`` for a DICOM series
directory, see :mod:`collapsekit.data.dicom`) -> ``EnsureChannelFirst`` ->
``Orientation("RAS")`` -> optional ``Spacing`` / ``Resize`` in plane (labels nearest) ->
the HU window of MONAI's ``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)``,

    y = clip((x - a_min) / (a_max - a_min), 0, 1),

so with the default window -175..250 HU: -175 -> 0, 37.5 -> 0.5, 250 -> 1. Axial slices are the last
axis. The window is computed here in float32 with the same operations as MONAI's transform (equal
bit for bit, tested), straight into a Fortran-ordered array: NIfTI volumes arrive in Fortran order
and every axial slice is then contiguous, with no C-order round trip (which cost 0.55 s of a 1.0 s
preprocessing of a 512² x 100 volume, against 0.23 s for the decode itself). Slices whose body (voxels above ``body_threshold_hu``) covers less than
``min_body_fraction`` of the slice are left out of :attr:`Volume.slices`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import (
    EnsureChannelFirst,
    Orientation,
    Resize,
    Spacing,
)

from collapsekit.data.dicom import read_series
from collapsekit.data.phantom import generate_phantom
from collapsekit.data.spec import PhantomConfig
from collapsekit.data.volume import CaseRecord, Volume
from collapsekit.errors import ConfigError, DataError

__all__ = ["PreprocessConfig", "preprocess_record", "window"]

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class PreprocessConfig:
    """How volumes are turned into network input.

    Args:
        a_min, a_max: HU window mapped linearly to [0, 1] and clipped (BTCV convention -175..250).
        pixdim: optional in-plane spacing ``(x, y)`` in mm to resample to (MONAI ``Spacing``,
            bilinear for images, nearest for labels); the slice spacing is kept.
        in_plane_size: optional in-plane size every slice is resized to (MONAI ``Resize``,
            anti-aliased for images, nearest for labels); keeps the cache small.
        min_body_fraction: slices whose body mask covers less than this fraction are skipped.
        body_threshold_hu: voxels above this HU count as body (air is -1000, fat -100).
    """

    a_min: float = -175.0
    a_max: float = 250.0
    pixdim: tuple[float, float] | None = None
    in_plane_size: int | None = None
    min_body_fraction: float = 0.05
    body_threshold_hu: float = -500.0

    def __post_init__(self) -> None:
        if not float(self.a_max) > float(self.a_min):
            raise ConfigError(
                f"HU window needs a_max > a_min, got a_min={self.a_min}, a_max={self.a_max}"
            )
        if self.pixdim is not None:
            pix = tuple(float(p) for p in self.pixdim)
            if len(pix) != 2 or min(pix) <= 0:
                raise ConfigError(
                    f"pixdim must be two positive in-plane spacings in mm, got {self.pixdim}"
                )
            object.__setattr__(self, "pixdim", pix)
        if self.in_plane_size is not None and int(self.in_plane_size) < 8:
            raise ConfigError(f"in_plane_size must be >= 8 pixels, got {self.in_plane_size}")
        if not 0.0 <= self.min_body_fraction < 1.0:
            raise ConfigError(f"min_body_fraction must be in [0, 1), got {self.min_body_fraction}")

    def key(self) -> dict[str, Any]:
        """Plain-data form, used in cache keys and checkpoints."""
        return asdict(self)


def window(hu: np.ndarray, a_min: float = -175.0, a_max: float = 250.0) -> np.ndarray:
    """The HU window in closed form: ``clip((hu - a_min) / (a_max - a_min), 0, 1)`` as float32.

    Same values as the MONAI ``ScaleIntensityRange`` used by the loader (-175 -> 0, 37.5 -> 0.5,
    250 -> 1 for the default window); handy to window a phantom array in a notebook.
    """
    hu = np.asarray(hu, dtype=np.float64)
    return np.clip((hu - a_min) / (a_max - a_min), 0.0, 1.0).astype(np.float32)


def check_readable(path: Path) -> None:
    """Raise :class:`DataError` naming ``path`` when it cannot be opened (permissions), so that a
    locked file is not reported as a corrupt one."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _read_nifti(path: Path, case_id: str, what: str):

    if not path.is_file():
        raise DataError(f"{what} file {path} of case {case_id} does not exist")
    check_readable(path)
    try:
        # MONAI's reader, called as LoadImage calls it: LoadImage itself constructs every registered
        # reader on each call, and MONAI 1.6's NvImgCodecPydicomReader then logs two warnings when
        # nvImageCodec is absent.
        reader = NibabelReader()
        data, meta = reader.get_data(reader.read(str(path)))
        arr = _as_meta(data, meta["affine"])
    except Exception:
        raise DataError(
            f"cannot read {path}: not a readable NIfTI volume (truncated or corrupt .nii/.nii.gz?)"
        ) from None
    while arr.ndim > 3 and arr.shape[-1] == 1:  # (H, W, Z, 1) is still a 3D volume
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(
            f"{path} is a {arr.ndim}D volume of shape {tuple(arr.shape)}; expected a 3D CT volume (H, W, Z)"
        )
    return arr


def _as_meta(array: np.ndarray, affine: np.ndarray):
    """float32 MetaTensor of ``array`` in its own memory order (NIfTI data are Fortran-ordered;
    a C-order copy would cost more than the decode)."""
    a = np.asarray(array, dtype=np.float32)
    if any(st < 0 for st in a.strides):  # torch takes any layout but negative strides
        a = np.ascontiguousarray(a)
    return MetaTensor(torch.from_numpy(a), affine=torch.as_tensor(affine, dtype=torch.float64))


def _window_fortran(hu: np.ndarray, a_min: float, a_max: float) -> np.ndarray:
    """``clip((hu - a_min) / (a_max - a_min), 0, 1)`` in float32 into a Fortran-ordered array:
    MONAI ``ScaleIntensityRange``'s operations in its order (the same float32 values)."""
    out = np.empty(hu.shape, dtype=np.float32, order="F")
    np.subtract(hu, np.float32(a_min), out=out, casting="same_kind")
    np.divide(out, np.float32(a_max - a_min), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _spatial(x, cfg: PreprocessConfig, is_label: bool):
    """Channel-first, RAS, optional in-plane resampling/resizing. ``x``: MetaTensor ``(H, W, Z)``."""

    x = EnsureChannelFirst(channel_dim="no_channel")(x)
    x = Orientation(axcodes="RAS", labels=_RAS_LABELS)(x)
    if cfg.pixdim is not None:
        x = Spacing(pixdim=(*cfg.pixdim, -1.0), mode="nearest" if is_label else "bilinear")(x)
    if cfg.in_plane_size is not None:
        s = int(cfg.in_plane_size)
        if is_label:
            x = Resize(spatial_size=(s, s, -1), mode="nearest-exact")(x)
        else:
            x = Resize(spatial_size=(s, s, -1), mode="trilinear", anti_aliasing=True)(x)
    return x


def _readonly_f(a: np.ndarray) -> np.ndarray:
    # Fortran order keeps each axial slice contiguous; read-only because volumes are shared by the cache.
    a = np.asfortranarray(a)
    a.flags.writeable = False
    return a


def _label_dtype(label: np.ndarray) -> np.ndarray:
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    return label.astype(np.uint8 if lo >= 0 and hi < 256 else np.int32)


def preprocess_record(
    record: CaseRecord, cfg: PreprocessConfig, phantom: PhantomConfig | None = None
) -> Volume:
    """Read and preprocess one case (no caching; see :func:`~collapsekit.data.loading.load_volumes`).

    Raises:
        DataError: missing or unreadable file, bad DICOM series (see
            :func:`~collapsekit.data.dicom.read_series`), 2D or 4D volume, non-finite intensities,
            image/label shape mismatch, non-integer label map. The message names the file.
    """
    if record.image is None:
        if record.seed is None:
            raise DataError(f"case {record.case_id} has neither an image file nor a phantom seed")
        p = phantom or PhantomConfig()
        hu_np, lab_np, affine = generate_phantom(record.seed, p.size, p.slices)
        image = _as_meta(hu_np, affine)
        label = _as_meta(lab_np, affine)
        source_path = None
    else:
        path = Path(record.image)
        if record.series_uid is not None or path.is_dir():
            image = _as_meta(*read_series(path, record.series_uid))
        else:
            image = _read_nifti(path, record.case_id, "image")
        if not bool(np.isfinite(image.numpy()).all()):
            raise DataError(f"{path} contains NaN or infinite intensities")
        label = None
        if record.label is not None:
            lpath = Path(record.label)
            label = _read_nifti(lpath, record.case_id, "label")
            if tuple(label.shape) != tuple(image.shape):
                raise DataError(
                    f"label {lpath} has shape {tuple(label.shape)} but image {path} has shape {tuple(image.shape)}"
                )
            lab = label.numpy()
            bad = ~np.isfinite(lab) | (lab != np.round(lab))
            if bad.any():
                raise DataError(
                    f"{lpath} is not an integer label map (e.g. value {float(lab[bad].flat[0]):g}); expected integer organ ids"
                )
        source_path = path

    source_affine = np.asarray(image.affine, dtype=np.float64).copy()

    img = _spatial(image, cfg, is_label=False)
    hu = img[0].numpy()
    body = (hu > cfg.body_threshold_hu).mean(axis=(0, 1)) if hu.shape[2] else np.zeros(0)
    slices = np.nonzero(body >= cfg.min_body_fraction)[0].astype(np.int64)
    scaled = _window_fortran(hu, cfg.a_min, cfg.a_max)
    lab_out = None
    if label is not None:
        lab_t = _spatial(label, cfg, is_label=True)
        lab_out = _readonly_f(_label_dtype(np.rint(lab_t[0].numpy())))
    return Volume(
        case_id=record.case_id,
        image=_readonly_f(scaled),
        label=lab_out,
        affine=np.asarray(img.affine, dtype=np.float64).copy(),
        slices=slices,
        source_affine=source_affine,
        source_path=source_path,
    )
