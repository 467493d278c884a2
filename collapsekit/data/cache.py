"""Preprocessed-volume cache: a process-wide dict plus an optional directory of ``.npz`` files.

A cache key is the JSON of ``{format, case, image file, label file, preprocessing}``, where a file
is ``(resolved path, size, mtime_ns)`` (a DICOM series directory adds ``(name, size, mtime_ns)`` of
every file in it) and a phantom case is ``(seed, size, slices, generator
version)``. Changing a file or any preprocessing field changes the key, so a stale entry is never
used. On-disk entries store their key and are checked against it when read; unreadable entries are
recomputed. Cached volumes are shared and read-only (``image.flags.writeable`` is False).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from collapsekit.data.dicom import series_fingerprint
from collapsekit.data.preprocess import PreprocessConfig
from collapsekit.data.spec import PhantomConfig
from collapsekit.data.volume import CaseRecord, Volume
from collapsekit.errors import DataError

__all__ = [
    "CACHE_FORMAT",
    "PHANTOM_VERSION",
    "cache_key",
    "clear_cache",
    "memory_cache_info",
    "read_disk",
    "write_disk",
    "MEMORY",
]

#: Bump when the preprocessing code changes what it produces.
CACHE_FORMAT = 1
#: Bump when the phantom generator changes its output.
PHANTOM_VERSION = 1

#: Process-wide in-memory cache: key digest -> Volume.
MEMORY: dict[str, Volume] = {}


def _file_key(path: Path, case_id: str, what: str) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{what} file {path} of case {case_id} does not exist") from None
    except OSError as e:
        raise DataError(
            f"cannot access {what} file {path} of case {case_id}: {e.strerror}"
        ) from None
    key: dict[str, Any] = {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    if path.is_dir():  # a DICOM series: every file of its directory
        key["files"] = series_fingerprint(path)
    return key


def cache_key(
    record: CaseRecord, preprocess: PreprocessConfig, phantom: PhantomConfig | None
) -> tuple[str, str]:
    """``(digest, key_json)`` identifying the preprocessed volume of ``record``."""
    key: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "case": record.case_id,
        "preprocess": preprocess.key(),
    }
    if record.image is None:
        p = phantom or PhantomConfig()
        key["phantom"] = {
            "seed": record.seed,
            "size": p.size,
            "slices": p.slices,
            "version": PHANTOM_VERSION,
        }
    else:
        key["image"] = _file_key(Path(record.image), record.case_id, "image")
        key["label"] = (
            None if record.label is None else _file_key(Path(record.label), record.case_id, "label")
        )
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32], text


def clear_cache() -> None:
    """Empty the in-memory cache (the on-disk cache is left alone)."""
    MEMORY.clear()


def memory_cache_info() -> dict[str, int]:
    """``{"volumes": n, "bytes": total}`` held by the in-memory cache."""
    total = sum(
        v.image.nbytes + (v.label.nbytes if v.label is not None else 0) for v in MEMORY.values()
    )
    return {"volumes": len(MEMORY), "bytes": int(total)}


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.asfortranarray(a)
    a.flags.writeable = False
    return a


def read_disk(cache_dir: Path, digest: str, key_json: str, case_id: str) -> Volume | None:
    """The cached volume, or ``None`` if absent, unreadable or for another key."""
    path = cache_dir / f"{digest}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key_json:
                return None
            label = z["label"] if "label" in z.files else None
            return Volume(
                case_id=case_id,
                image=_readonly(z["image"]),
                label=None if label is None else _readonly(label),
                affine=z["affine"],
                slices=z["slices"],
                source_affine=z["source_affine"],
                source_path=Path(str(z["source_path"])) if str(z["source_path"]) else None,
            )
    except Exception:  # a damaged cache entry is recomputed, never fatal
        return None


def write_disk(cache_dir: Path, digest: str, key_json: str, volume: Volume) -> None:
    """Store ``volume`` atomically (temporary file, then ``os.replace``)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "key": np.array(key_json),
        "image": volume.image,
        "affine": volume.affine,
        "slices": volume.slices,
        "source_affine": volume.source_affine
        if volume.source_affine is not None
        else volume.affine,
        "source_path": np.array(str(volume.source_path) if volume.source_path else ""),
    }
    if volume.label is not None:
        arrays["label"] = volume.label
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{digest}.", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache_dir / f"{digest}.npz")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
