"""From a NIfTI file, a DICOM series or a phantom case to a preprocessed :class:`~collapsekit.data.volume.Volume`.

The chain follows MONAI's BTCV recipe: ``NibabelReader`` (or ``PydicomReader`` for a DICOM series
directory, see :mod:`collapsekit.data.dicom`) -> ``EnsureChannelFirst`` ->
``Orientation("RAS")`` -> optional ``Spacing`` / ``Resize`` in plane (labels nearest) ->
the HU window of MONAI's ``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)``,

    y = clip((x - a_min) / (a_max - a_min), 0, 1),

so with the default window -175..250 HU: -175 -> 0, 37.5 -> 0.5, 250 -> 1. Axial slices are the last
axis. Slices whose body (voxels above ``body_threshold_hu``) covers less than ``min_body_fraction``
of the slice are left out of :attr:`Volume.slices`.

How it is made fast (preprocessing runs once per volume, but AbdomenCT-1K has 1,000 of them, and
the aim is a cost close to the ``.nii.gz`` decode itself):

- Volumes stay in NIfTI's Fortran order, so every axial slice is one contiguous run of bytes; a
  C-order round trip cost 0.55 s of a 1.0 s preprocessing of a 512² x 100 volume.
- The image keeps the file's integer dtype through ``Orientation`` (a flip of int16 moves half the
  bytes of float32); it becomes float32 first only when ``Spacing``/``Resize`` resample it.
- The window runs a block of slices (about 1 MiB of float32) at a time: cast to float32, the body
  fraction, then MONAI ``ScaleIntensityRange``'s float32 operations in its order (equal bit for bit,
  tested), then the store into the output (float32, or float16 straight away for the disk cache).
  No volume-sized float32 temporary is allocated, whose page faults alone cost more than the
  arithmetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import (
    EnsureChannelFirst,
    Orientation,
    Resize,
    Spacing,
)

from collapsekit.data._nifti_guard import check_nifti_header
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


def _read_nifti(path: Path, case_id: str, what: str, *, native: bool = False):
    """The volume as a MetaTensor ``(H, W, Z)``: float32, or with ``native`` in the file's own
    dtype where torch and the window take it as it is (see :func:`_as_meta`)."""
    check_nifti_header(path, case_id, what)  # before a voxel is decompressed
    check_readable(path)
    try:
        # MONAI's reader, called as LoadImage calls it: LoadImage itself constructs every registered
        # reader on each call, and MONAI 1.6's NvImgCodecPydicomReader then logs two warnings when
        # nvImageCodec is absent.
        reader = NibabelReader()
        data, meta = reader.get_data(reader.read(str(path)))
        arr = _as_meta(data, meta["affine"], native=native)
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


#: Dtypes an image keeps until the window (each exact in float32 but int32, which the window casts
#: to float32 exactly as a float32 reader would); any other dtype becomes float32 on reading.
_NATIVE_DTYPES = frozenset(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.int32, np.float32))


def _as_meta(array: np.ndarray, affine: np.ndarray, *, native: bool = False):
    """MetaTensor of ``array`` in its own memory order (NIfTI data are Fortran-ordered; a C-order
    copy would cost more than the decode): float32, or with ``native`` the array's own dtype when
    it is one of :data:`_NATIVE_DTYPES` (the window casts it to float32 a block at a time)."""
    a = np.asarray(array)
    if not (native and a.dtype in _NATIVE_DTYPES):
        a = np.asarray(a, dtype=np.float32)
    if any(st < 0 for st in a.strides):  # torch takes any layout but negative strides
        a = np.ascontiguousarray(a)
    return MetaTensor(torch.from_numpy(a), affine=torch.as_tensor(affine, dtype=torch.float64))


#: Elements of one block of the window (float32: 1 MiB), small enough for the block's passes to
#: stay in the CPU cache.
_BLOCK_ELEMENTS = 1 << 18


class ImageSink(Protocol):
    """Where :func:`preprocess_record` puts the windowed image, e.g. straight into the bytes of a
    cache file that is written while the rest is computed
    (:class:`~collapsekit.data.cache.EntryImage`)."""

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The output array: ``shape``, ``dtype``, Fortran order, writable."""
        ...

    def done(self, z: int) -> None:
        """Slices ``[0, z)`` of the array are final."""
        ...


#: Output dtypes of the window.
IMAGE_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def cast_into(out: np.ndarray, src: np.ndarray) -> None:
    """``out[...] = src`` with float32 -> float16 through torch, whose vectorised conversion is ~4x
    faster than numpy's on x86 and rounds the same (to nearest, ties to even; tested)."""
    if out.dtype == np.float16 and src.dtype == np.float32:
        torch.from_numpy(out).copy_(torch.from_numpy(src))
    else:
        np.copyto(out, src, casting="unsafe")


def _window_blocks(
    hu: np.ndarray,
    cfg: PreprocessConfig,
    dtype: np.dtype | type = np.float32,
    sink: ImageSink | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, body)``: the HU window of ``hu`` ``(H, W, Z)`` (any real dtype) as a
    Fortran-ordered ``dtype`` array, and each slice's body fraction (voxels above
    ``cfg.body_threshold_hu``).

    The values are MONAI ``ScaleIntensityRange(a_min, a_max, 0, 1, clip=True)``'s on the float32
    volume, bit for bit (its operations in its order, ``x - a_min``, ``/ (a_max - a_min)``,
    ``clip``), rounded to float16 afterwards when asked; computed a block of slices at a time.
    ``sink``: makes the output array and hears of every finished block (default ``np.empty``).
    """
    dtype = np.dtype(dtype)
    if dtype not in IMAGE_DTYPES:
        raise ConfigError(f"image dtype must be float32 or float16, got {dtype}")
    h, w, z = hu.shape
    if sink is None:
        out = np.empty(hu.shape, dtype=dtype, order="F")
    else:
        out = sink.allocate(hu.shape, dtype)
        if out.shape != hu.shape or out.dtype != dtype or not out.flags.f_contiguous:
            raise ValueError(
                f"the sink made a {out.dtype} {out.shape} array, not Fortran {dtype} {hu.shape}"
            )
    body = np.zeros(z, dtype=np.float64)
    step = max(1, _BLOCK_ELEMENTS // max(1, h * w))
    buf = np.empty((h, w, min(step, z)), dtype=np.float32, order="F")
    mask = np.empty(buf.shape, dtype=bool, order="F")
    a_min, span = np.float32(cfg.a_min), np.float32(cfg.a_max - cfg.a_min)
    for z0 in range(0, z, step):
        z1 = min(z, z0 + step)
        b = buf[:, :, : z1 - z0]
        np.copyto(b, hu[:, :, z0:z1], casting="unsafe")  # the float32 volume of MONAI's chain
        if h * w:  # the mean of the mask, as a count (4x faster than ``mean`` over two axes)
            m = np.greater(b, cfg.body_threshold_hu, out=mask[:, :, : z1 - z0])
            for j in range(z1 - z0):
                body[z0 + j] = np.count_nonzero(m[:, :, j]) / (h * w)
        np.subtract(b, a_min, out=b)
        np.divide(b, span, out=b)
        np.clip(b, 0.0, 1.0, out=b)
        cast_into(out[:, :, z0:z1], b)
        if sink is not None:
            sink.done(z1)
    return out, body


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
    record: CaseRecord,
    cfg: PreprocessConfig,
    phantom: PhantomConfig | None = None,
    *,
    image_dtype: np.dtype | type = np.float32,
    sink: ImageSink | None = None,
) -> Volume:
    """Read and preprocess one case (no caching; see :func:`~collapsekit.data.loading.load_volumes`).

    ``image_dtype``: float32, or float16 (what the disk cache stores: the float32 values rounded to
    nearest, computed without a float32 volume in between). ``sink``: where the image is computed
    (:class:`ImageSink`; default a new array), e.g. into the file of its cache entry.

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
        image = _as_meta(hu_np, affine, native=True)
        label = _as_meta(lab_np, affine)
        source_path = None
    else:
        path = Path(record.image)
        if record.series_uid is not None or path.is_dir():
            image = _as_meta(*read_series(path, record.series_uid), native=True)
        else:
            image = _read_nifti(path, record.case_id, "image", native=True)
        if image.dtype.is_floating_point and not bool(np.isfinite(image.numpy()).all()):
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

    if (cfg.pixdim is not None or cfg.in_plane_size is not None) and image.dtype != torch.float32:
        image = _as_meta(image.numpy(), image.affine)  # resampling interpolates in float32
    img = _spatial(image, cfg, is_label=False)
    scaled, body = _window_blocks(img[0].numpy(), cfg, image_dtype, sink)
    slices = np.nonzero(body >= cfg.min_body_fraction)[0].astype(np.int64)
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
