"""What a file is, from its first bytes: so a wrong file gets a plain answer, not a loader's error.

A user who passes ``config.toml`` or ``embeddings.npy`` where a checkpoint belongs should read
"config.toml is a text file, not a checkpoint", not a weights-only unpickler's security alarm or a
``KeyError`` from deep inside ``torch.load``. :func:`sniff` looks at magic numbers only (never
unpickles, never decompresses more than a zip directory), so it is safe on hostile files.
"""

from __future__ import annotations

import zipfile
from enum import StrEnum
from pathlib import Path

__all__ = ["FileKind", "sniff"]


class FileKind(StrEnum):
    """Kinds of file collapsekit can tell apart by their first bytes."""

    EMPTY = "an empty file"
    TORCH_ZIP = "a PyTorch archive"
    NPZ = "a NumPy .npz archive"
    ZIP = "a zip archive"
    PICKLE = "a Python pickle"
    NPY = "a NumPy .npy array"
    NIFTI = "a NIfTI image"
    GZIP = "a gzip-compressed file"
    DICOM = "a DICOM file"
    PNG = "a PNG image"
    JPEG = "a JPEG image"
    TEXT = "a text file"
    BINARY = "an unrecognised binary file"

    @property
    def description(self) -> str:
        """``"a text file"``, ``"a NumPy .npy array"``, ... (for messages)."""
        return str(self.value)


def _zip_kind(path: Path) -> FileKind:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except Exception:  # noqa: BLE001 - a mangled zip directory fails in many ways; it is a zip
        return FileKind.ZIP
    if any(n.endswith("data.pkl") for n in names):
        return FileKind.TORCH_ZIP
    if names and all(n.endswith(".npy") for n in names):
        return FileKind.NPZ
    return FileKind.ZIP


def sniff(path: str | Path) -> FileKind:
    """Kind of the file at ``path`` from its magic bytes.

    Known signatures: zip (``PK\\x03\\x04``; a PyTorch archive holds ``*/data.pkl``, an ``.npz``
    only ``.npy`` members), pickle protocol 2–5 (``\\x80`` + protocol byte), ``\\x93NUMPY``, NIfTI-1/2
    (header size 348 or 540 in either byte order), gzip (``\\x1f\\x8b``, e.g. ``.nii.gz``), DICOM
    (``DICM`` at byte 128), PNG, JPEG; otherwise text when the first 4 KiB decode as UTF-8 without
    control characters, else binary.

    Raises:
        OSError: the file cannot be opened or read.
    """
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(4096)
    if not head:
        return FileKind.EMPTY
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(p)
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        return FileKind.PICKLE
    if head.startswith(b"\x93NUMPY"):
        return FileKind.NPY
    if head.startswith(b"\x1f\x8b"):
        return FileKind.GZIP
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return FileKind.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return FileKind.JPEG
    if len(head) >= 132 and head[128:132] == b"DICM":
        return FileKind.DICOM
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return FileKind.NIFTI
    if len(head) >= 4 and int.from_bytes(head[:4], "big") in (348, 540):
        return FileKind.NIFTI
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the 4 KiB boundary is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return FileKind.BINARY
    if all(c.isprintable() or c in "\t\r\n\f" for c in text):
        return FileKind.TEXT
    return FileKind.BINARY
