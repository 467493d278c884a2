"""Preprocessed-volume cache: a process-wide dict plus an optional directory of memory-mapped entries.

A cache key is the JSON of ``{format, case, image file, label file, preprocessing}``, where a file
is ``(resolved path, size, mtime_ns, ctime_ns, inode)`` (a DICOM series directory adds the same of
every file in it) and a phantom case is ``(seed, size, slices, generator version)``. Changing a
file or any preprocessing field changes the key, so a stale entry is never used: a rewrite in
place that keeps the size and the mtime (``cp -p``, ``os.utime``) still changes the ctime, which
user space cannot set back; a file replaced by another (``mv``) has another inode. What is not
detected: a change made with the system clock set back to the old ctime, or by writing to the
block device under the file system. The cost is false misses: ``chmod``, ``chown``, a hard link or
(on some file systems) a rename also set the ctime, and the volume is recomputed once. Cached volumes are shared and read-only (``image.flags.writeable`` is False).

On disk an entry is three files named by the key's digest (the first 32 hex digits of its SHA-256):

- ``<digest>.image.npy``: the windowed image as **float16**, ``(H, W, Z)`` in Fortran order so that
  every axial slice is one contiguous run of bytes;
- ``<digest>.label.npy``: the label map in its own integer dtype (uint8 or int32; never quantised),
  present only when the case has labels;
- ``<digest>.json``: the full key and the small arrays (affines, usable slices, source path). It is
  written last and is the entry's commit record.

Reads memory-map the arrays (``np.load(mmap_mode="r")``), so a cached volume costs no resident
memory until its slices are read; :func:`read_slice` copies one slice out and hands the pages
back to the page cache, so resident memory stays bounded however many volumes there are.

Why float16: the window maps to [0, 1], where float16 rounds to nearest with an error of at most
:data:`QUANTISATION_ERROR` = 2⁻¹² ≈ 2.4·10⁻⁴, i.e. 0.10 HU of the default 425-HU window — finer than
the integer HU of the source files — at half the size of float32. The cached image stays a
floating-point array in [0, 1], so every consumer that casts slices to float32 reads the same
numbers with no dequantisation step to forget; uint8 would halve the size again but at 1.7 HU
steps and with a scale every reader must apply.

Concurrent writers (two torchrun ranks, two runs) are safe: every file is written to a temporary
file in the cache directory and moved into place with ``os.replace``, data files before the
``.json``; an entry for a digest always holds the same bytes whoever wrote it, and a reader accepts
it only if the ``.json`` exists, its stored key equals the expected key (a cache written by another
preprocessing configuration, or a hash collision, is never read) and the arrays check out against
it (:mod:`collapsekit.data._cache_check`: shapes, dtypes, slice indices, affines, a sample
checksum). Anything else is a miss and is recomputed; a damaged entry with a one-line note.

The public API is ``__all__`` (:func:`clear_cache`, :func:`memory_cache_info` and two constants);
the entry functions (``cache_key``, ``read_disk``, ``write_disk``, ``EntryImage``, ...) are shared
by the data layer's own modules and are not part of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from collapsekit.data._cache_check import entry_checks, entry_problem
from collapsekit.data._direct_io import DirectFile, NpyBuffer
from collapsekit.data.dicom import series_fingerprint
from collapsekit.data.preprocess import PreprocessConfig, cast_into
from collapsekit.data.spec import PhantomConfig
from collapsekit.data.volume import CaseRecord, Volume
from collapsekit.errors import DataError, OutputError
from collapsekit.serialization import atomic_write

__all__ = ["CACHE_IMAGE_DTYPE", "QUANTISATION_ERROR", "clear_cache", "memory_cache_info"]

#: Bump when the preprocessing code or the on-disk format changes what is stored.
CACHE_FORMAT = 3
#: Bump when the phantom generator changes its output.
PHANTOM_VERSION = 1
#: dtype of cached images on disk.
CACHE_IMAGE_DTYPE = np.dtype(np.float16)
#: Largest ``|cached - uncached|`` of an image value in [0, 1]: half the float16 spacing on [0.5, 1].
QUANTISATION_ERROR = 2.0**-12

#: A temporary file older than this (seconds) belongs to a writer that was killed.
STALE_TEMPORARY_S = 3600.0

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
        # a rewrite that keeps size and mtime (cp -p, os.utime) still sets the ctime, which no
        # user-space call can set back; a new file at the path has another inode
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
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


def _resident_bytes(a: np.ndarray | None) -> int:
    return 0 if a is None or isinstance(a, np.memmap) else int(a.nbytes)


def _mapped_bytes(a: np.ndarray | None) -> int:
    return int(a.nbytes) if isinstance(a, np.memmap) else 0


def memory_cache_info() -> dict[str, int]:
    """``{"volumes": n, "bytes": b, "mapped_bytes": m}`` of the in-memory cache.

    ``bytes`` counts arrays held in memory; ``mapped_bytes`` the memory-mapped arrays of disk-cache
    entries, which occupy page cache only while their slices are being read.
    """
    vols = list(MEMORY.values())
    return {
        "volumes": len(vols),
        "bytes": sum(_resident_bytes(v.image) + _resident_bytes(v.label) for v in vols),
        "mapped_bytes": sum(_mapped_bytes(v.image) + _mapped_bytes(v.label) for v in vols),
    }


def entry_files(cache_dir: Path, digest: str) -> dict[str, Path]:
    """The files of the disk-cache entry ``digest``: ``{"image", "label", "meta"}``."""
    return {
        "image": cache_dir / f"{digest}.image.npy",
        "label": cache_dir / f"{digest}.label.npy",
        "meta": cache_dir / f"{digest}.json",
    }


def _mapped(path: Path, shape: list[int], dtype: str) -> np.ndarray | None:
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    if list(a.shape) != shape or a.dtype != np.dtype(dtype) or not a.flags.f_contiguous:
        return None
    return a


def read_disk(
    cache_dir: Path, digest: str, key_json: str, case_id: str, notes: list[str] | None = None
) -> Volume | None:
    """The cached volume, memory-mapped, or ``None`` if absent, incomplete, damaged or for another key.

    The image is float16 (see the module docstring for the bound on its difference from float32),
    the label keeps its integer dtype; both are read-only ``np.memmap`` arrays in Fortran order.
    A present entry of this key is validated against its arrays
    (:func:`~collapsekit.data._cache_check.entry_problem`: shapes, dtypes, slice indices, affines,
    a sample checksum); a damaged one reads as a miss (so it is rebuilt) and, with ``notes``,
    adds one line saying why.
    """
    files = entry_files(cache_dir, digest)
    try:
        meta = json.loads(files["meta"].read_text())
        if meta.get("key") != key_json:
            return None
        image = _mapped(files["image"], meta["shape"], CACHE_IMAGE_DTYPE.str)
        label = None
        problem = None if image is not None else "its image does not match its shape or dtype"
        if meta["label_dtype"] is not None and problem is None:
            label = _mapped(files["label"], meta["shape"], meta["label_dtype"])
            if label is None:
                problem = "its label map does not match its shape or dtype"
        if problem is None and image is not None:
            problem = entry_problem(files, meta, image, label)
        if problem is not None or image is None:
            if notes is not None:
                notes.append(
                    f"cache entry of case {case_id} in {cache_dir} is damaged ({problem}); rebuilt"
                )
            return None
        return Volume(
            case_id=case_id,
            image=image,
            label=label,
            affine=np.asarray(meta["affine"], dtype=np.float64),
            slices=np.asarray(meta["slices"], dtype=np.int64),
            source_affine=np.asarray(meta["source_affine"], dtype=np.float64),
            source_path=Path(meta["source_path"]) if meta["source_path"] else None,
        )
    except Exception:  # a missing, half-deleted or damaged entry is recomputed, never fatal
        return None


#: Arrays from this size on are written with ``O_DIRECT`` where the file system allows it.
DIRECT_MIN_BYTES = 1 << 20


def _write_npy(path: Path, npy: NpyBuffer, direct: bool = True) -> None:
    """Write the ``.npy`` file held by ``npy`` atomically: with ``O_DIRECT`` when it is large and
    ``direct`` (:class:`~collapsekit.data._direct_io.DirectFile`: a fraction of the CPU), else the
    usual way."""
    if direct and npy.size >= DIRECT_MIN_BYTES:
        with DirectFile(path, npy.buffer, npy.size) as f:
            f.commit()
    else:
        with atomic_write(path, "wb") as f:
            f.write(memoryview(npy.buffer.data)[: npy.size])


def _save_array(path: Path, array: np.ndarray, direct: bool = True) -> None:
    """``np.save`` of ``array`` in Fortran order, atomically (the same file for volumes; see
    :func:`_write_npy`)."""
    _write_npy(path, NpyBuffer.of(np.asfortranarray(array)), direct)


def _output_error(case_id: str, cache_dir: Path, e: OSError) -> OutputError:
    return OutputError(
        f"cannot write the cache entry of case {case_id} to {cache_dir}: {e.strerror or e}"
    )


class EntryImage:
    """The float16 image of a cache entry, computed inside its ``.npy`` bytes and written to disk
    while it is computed: the :class:`~collapsekit.data.preprocess.ImageSink` a preprocessing
    worker hands to ``preprocess_record``.

    :meth:`allocate` opens the entry's image file (:class:`~collapsekit.data._direct_io.DirectFile`
    for arrays of :data:`DIRECT_MIN_BYTES` or more), each finished block of slices goes to the
    disk in the background (:meth:`done`), and :meth:`commit` (called by :func:`write_disk`)
    writes the rest and publishes the file. Use it in a ``with`` block: leaving it without a
    commit (an error) removes the temporary file. ``direct=False`` writes the usual way (no
    ``O_DIRECT``: network file systems, where each such write is a synchronous round trip).

    Raises:
        OutputError: the file cannot be written (read-only directory, full disk), naming the case.
    """

    def __init__(self, cache_dir: Path, digest: str, case_id: str, *, direct: bool = True) -> None:
        self.cache_dir = cache_dir
        self.direct = direct
        self.path = entry_files(cache_dir, digest)["image"]
        self.case_id = case_id
        self.npy: NpyBuffer | None = None
        self.file: DirectFile | None = None

    def allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        self.npy = NpyBuffer(shape, dtype)
        if self.direct and self.npy.size >= DIRECT_MIN_BYTES:
            try:
                self.file = DirectFile(self.path, self.npy.buffer, self.npy.size)
            except OSError as e:
                raise _output_error(self.case_id, self.cache_dir, e) from None
        return self.npy.array

    def done(self, z: int) -> None:
        if self.file is not None and self.npy is not None:
            shape = self.npy.array.shape
            slice_bytes = int(np.prod(shape[:-1], dtype=np.int64)) * self.npy.array.itemsize
            self.file.ready(self.npy.header_bytes + z * slice_bytes)

    def holds(self, array: np.ndarray) -> bool:
        return self.npy is not None and self.npy.holds(array)

    def commit(self) -> None:
        """Write what is left and move the file into place (``OSError`` on failure)."""
        assert self.npy is not None
        if self.file is not None:
            self.file.commit()
        else:  # small, or O_DIRECT turned off
            _write_npy(self.path, self.npy, direct=False)

    def abort(self) -> None:
        if self.file is not None:
            self.file.abort()

    def __enter__(self) -> EntryImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def write_disk(
    cache_dir: Path,
    digest: str,
    key_json: str,
    volume: Volume,
    image: EntryImage | None = None,
    *,
    direct: bool = True,
) -> None:
    """Store ``volume`` as a disk-cache entry (image as float16), each file written atomically.

    The arrays go first and the ``.json`` commit record last, each through a temporary file in
    ``cache_dir`` and ``os.replace``: a reader never sees a half-written file, and a writer killed
    midway leaves at most arrays without a ``.json``, which read as a miss.

    ``image``: where the float16 image was computed (and partly written already): an
    :class:`EntryImage` of this entry holding ``volume.image``, committed from there with no copy.
    ``direct``: write large arrays with ``O_DIRECT`` where the file system allows it (see
    :class:`EntryImage`).

    Raises:
        OutputError: the entry cannot be written (read-only directory, full disk); the message
            names the case and the directory.
    """
    try:
        _write_entry(entry_files(cache_dir, digest), key_json, volume, image, direct)
    except OSError as e:
        raise _output_error(volume.case_id, cache_dir, e) from None


def _write_entry(
    files: dict[str, Path],
    key_json: str,
    volume: Volume,
    computed: EntryImage | None,
    direct: bool,
) -> None:
    image = np.asarray(volume.image)
    if computed is not None and computed.path == files["image"] and computed.holds(image):
        computed.commit()
    else:
        if image.dtype != CACHE_IMAGE_DTYPE:  # a float32 volume (workers compute float16)
            stored = np.empty(image.shape, dtype=CACHE_IMAGE_DTYPE, order="F")
            cast_into(stored, image)
            image = stored
        _save_array(files["image"], image, direct)
    if volume.label is not None:
        _save_array(files["label"], np.asarray(volume.label), direct)
    meta = {
        "key": key_json,
        "case": volume.case_id,
        "shape": list(image.shape),
        "image_dtype": CACHE_IMAGE_DTYPE.str,
        "label_dtype": None if volume.label is None else np.asarray(volume.label).dtype.str,
        "affine": np.asarray(volume.affine, dtype=np.float64).tolist(),
        "source_affine": np.asarray(
            volume.source_affine if volume.source_affine is not None else volume.affine,
            dtype=np.float64,
        ).tolist(),
        "slices": [int(s) for s in volume.slices],
        "source_path": str(volume.source_path) if volume.source_path else "",
    }
    # the checksum of the files as they now lie on disk, read back as a reader will map them
    meta["check"] = entry_checks(
        files,
        np.load(files["image"], mmap_mode="r"),
        None if volume.label is None else np.load(files["label"], mmap_mode="r"),
    )
    with atomic_write(files["meta"], "w") as f:
        json.dump(meta, f)


def remove_stale_temporaries(cache_dir: Path, older_than_s: float = STALE_TEMPORARY_S) -> int:
    """Delete temporary files (``.<entry file>.*.tmp``) that writers killed midway left behind.

    Only files untouched for ``older_than_s`` seconds go: the temporaries of writers still running
    (another rank, another run) are minutes old at most. Returns how many were removed.
    """
    now, removed = time.time(), 0
    for p in cache_dir.glob(".*.tmp"):
        try:
            if now - p.stat().st_mtime > older_than_s:
                p.unlink()
                removed += 1
        except OSError:  # gone already (another process cleaned up), or not ours to remove
            pass
    return removed


def read_slice(array: np.ndarray, z: int, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A copy of the axial slice ``array[:, :, z]`` as ``dtype``.

    For a memory-mapped array (a disk-cache entry) the mapping's pages are then dropped from this
    process (``madvise(MADV_DONTNEED)``; the data stays in the OS page cache, so reading it again
    costs a minor page fault, not disk I/O). An epoch over any number of cached volumes thus keeps
    only the slices in flight resident, instead of every page it ever touched.
    """
    out = np.array(array[:, :, z], dtype=dtype)
    mm = getattr(array, "_mmap", None)  # np.memmap's mapping (None for views and plain arrays)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)
    return out


def _mapping_of(a: np.ndarray | None) -> tuple[str, str, tuple[int, ...], int] | None:
    # A whole memory-mapped file array (not a view of one): its base is the mmap itself.
    if isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap) and a.filename:
        return str(a.filename), a.dtype.str, tuple(a.shape), int(a.offset)
    return None


def _reopen(ref: tuple[str, str, tuple[int, ...], int] | None) -> np.ndarray | None:
    if ref is None:
        return None
    filename, dtype, shape, offset = ref
    return np.memmap(
        filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape, order="F"
    )


@dataclass(frozen=True)
class MappedVolume:
    """A volume whose memory-mapped arrays are replaced by ``(file, dtype, shape, offset)``.

    Pickling a ``np.memmap`` copies its whole content; a DataLoader that starts its workers with
    ``spawn`` (macOS, Windows, or ``multiprocessing_context="spawn"``) would so send every cached
    volume to every worker. ``MappedVolume.of(v)`` pickles in a few hundred bytes and
    :meth:`open` maps the same files again. Arrays held in memory travel as they are.
    """

    volume: Volume
    image: tuple[str, str, tuple[int, ...], int] | None
    label: tuple[str, str, tuple[int, ...], int] | None

    @classmethod
    def of(cls, v: Volume) -> MappedVolume:
        image, label = _mapping_of(v.image), _mapping_of(v.label)
        empty = np.zeros((0, 0, 0), np.float16)
        return cls(
            dataclasses.replace(
                v,
                image=empty if image is not None else v.image,
                label=None if label is not None else v.label,
            ),
            image,
            label,
        )

    def open(self) -> Volume:
        """The volume with its arrays mapped again (read-only, Fortran order)."""
        image, label = _reopen(self.image), _reopen(self.label)
        return dataclasses.replace(
            self.volume,
            image=self.volume.image if image is None else image,
            label=self.volume.label if label is None else label,
        )
