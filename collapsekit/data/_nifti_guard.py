"""Checks of a NIfTI file's header before a voxel is decompressed (hostile or broken files).

A ``.nii.gz`` of 20 MB can declare 16384 x 16384 x 40 int16 voxels over 21 GB of compressed zeros;
decoding it first and checking afterwards exhausted the memory. The header (352 bytes) says what the
body will cost, so it is checked first:

* the declared voxel count against :func:`max_voxels` (default :data:`DEFAULT_MAX_VOXELS`
  = 2**30, 1 Gi voxels: 2 GiB as int16, 4 GiB as float32; the largest abdominal CTs are
  512 x 512 x 2,000 = 0.5 Gi), configurable with ``$COLLAPSEKIT_MAX_VOXELS``;
* dimensions that are zero (a ``(32, 32, 0)`` volume has nothing to read).

The body itself is read by nibabel, which decompresses exactly the bytes the header declares
(``gzip`` streams are read incrementally, never inflated whole): trailing data after the declared
voxels is never decompressed, so peak memory is bounded by the declared size (tested under an
address-space limit).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from collapsekit.data.volume import describe_path
from collapsekit.errors import ConfigError, DataError

__all__ = ["DEFAULT_MAX_VOXELS", "MAX_VOXELS_ENV", "max_voxels", "check_nifti_header"]

DEFAULT_MAX_VOXELS = 1 << 30
MAX_VOXELS_ENV = "COLLAPSEKIT_MAX_VOXELS"


def max_voxels() -> int:
    """The voxel limit: ``$COLLAPSEKIT_MAX_VOXELS`` (a positive integer) or 2**30.

    An environment variable rather than an argument because preprocessing workers (other processes)
    must see the same limit; it is read on each check, so a test or a script may set it.
    """
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"${MAX_VOXELS_ENV} must be a positive integer, got {raw!r}")
    return value


def check_nifti_header(path: Path, case_id: str, what: str) -> None:
    """Raise :class:`DataError` before decoding ``path`` when it is not a regular file, its header
    cannot be parsed, or the size it declares is empty or above :func:`max_voxels`.

    Only the header is read (nibabel's ``load`` is lazy).
    """
    if not path.is_file():
        raise DataError(f"{what} file {path} of case {case_id} {describe_path(path)}")
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        shape = tuple(int(n) for n in header.get_data_shape())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the reader reports an unreadable file with its own message
        return
    if not shape or min(shape) == 0:
        raise DataError(
            f"{path} declares an empty volume of shape {shape}; expected a 3D CT volume (H, W, Z)"
        )
    n = int(np.prod(np.asarray(shape, dtype=np.float64)))
    limit = max_voxels()
    if n > limit:
        raise DataError(
            f"{path} declares {'x'.join(map(str, shape))} = {n:,} voxels, above the limit of "
            f"{limit:,} (${MAX_VOXELS_ENV}); a corrupt or hostile header? Raise the limit if "
            "the volume is real"
        )
