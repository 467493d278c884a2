"""Plain-JSON conversion for results: numpy/torch values, paths and dataclasses to JSON data."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "append_line",
    "atomic_write",
    "save_nifti",
    "to_jsonable",
    "write_json",
]


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and dataclasses to plain JSON data.

    Non-finite floats become ``None`` (JSON has no NaN).
    """
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    torch = sys.modules.get("torch")  # a tensor implies torch is loaded; never import it here
    if torch is not None and isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy())
    return obj


def _publish(tmp: str, path: Path) -> None:
    """Give the finished temporary file the usual permissions (``0o666 & ~umask``, not
    ``mkstemp``'s 0600) and move it onto ``path`` in one step (``os.replace``)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` (``os.replace``).

    A reader (or a crash, or a full disk) never sees a half-written file: on any error the
    temporary file is removed and ``path`` is untouched. The file gets the usual permissions
    (``0o666 & ~umask``, not ``mkstemp``'s 0600); parent folders are created. With ``fsync`` the
    data and the directory entry are flushed to disk (checkpoints).

    Args:
        path: the target file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        _publish(tmp, path)
        if fsync:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_nifti(img: Any, path: str | Path) -> Path:
    """``nibabel.save(img, path)`` atomically: into a hidden temporary file beside ``path`` (same
    extension, so nibabel picks the same format and compression), then ``os.replace``.

    On any error (a full disk, a signal) the temporary file is removed and ``path`` is untouched.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON (converted by :func:`to_jsonable`) atomically (see
    :func:`atomic_write`), creating parent dirs."""
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2) + "\n"
    with atomic_write(path) as f:
        f.write(text)
    return path


def append_line(line: str, path: Path) -> None:
    """Append ``line`` and a newline to ``path``; on failure cut the file back (no torn line)."""
    with open(path, "a") as f:
        start = f.tell()
        try:
            f.write(line + "\n")
            f.flush()
        except OSError:
            f.truncate(start)
            raise
