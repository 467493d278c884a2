"""Plain-JSON conversion for results: numpy/torch values, paths and dataclasses to JSON data."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
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
    "DIRECT_ALIGN",
    "DirectFile",
    "aligned_buffer",
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


#: Alignment of ``O_DIRECT`` writes (buffer address, length and file offset): 4 KiB, the largest
#: logical block size of common disks, so it suits every one of them.
DIRECT_ALIGN = 4096


def aligned_buffer(nbytes: int) -> np.ndarray:
    """A uint8 array of ``nbytes`` rounded up to a multiple of :data:`DIRECT_ALIGN` (one block at
    least), its address aligned to it: what :class:`DirectFile` writes."""
    padded = max(1, -(-nbytes // DIRECT_ALIGN)) * DIRECT_ALIGN  # one block at least
    raw = np.empty(padded + DIRECT_ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % DIRECT_ALIGN
    return raw[start : start + padded]


class DirectFile:
    """A file written from an aligned buffer with ``O_DIRECT``, part by part, then published atomically.

    The buffer (from :func:`aligned_buffer`) is written to a temporary file beside ``path`` as its
    content becomes final (:meth:`ready`), by one background thread whose writes wait for the disk
    while the caller computes the rest; :meth:`commit` writes what is left, truncates the file to
    ``size`` and moves it onto ``path`` (``os.replace``, the usual permissions), as
    :func:`atomic_write` does. Leaving the ``with`` block without :meth:`commit` (an error) removes
    the temporary file and leaves ``path`` untouched.

    Why: for a large file ``O_DIRECT`` costs a fraction of the CPU of a buffered write, whose copy
    into the page cache and later writeback are paid for every 4 KiB page (on an ext4 virtual disk
    4 ms instead of 119 ms of CPU for a 52 MB volume: ``benchmarks/cache_write.py``), and a write-once
    cache of 100 GB does not evict everything else from the page cache.

    Where the platform or the file system has no ``O_DIRECT`` (or refuses the alignment),
    :attr:`direct` is False, nothing is written early, and :meth:`commit` writes the file the usual
    way (``buffered=False`` instead makes it write nothing and return False).
    """

    #: Bytes gathered before a background write is issued.
    CHUNK = 4 << 20

    def __init__(self, path: str | Path, buffer: np.ndarray, size: int) -> None:
        self.path = Path(path)
        self.buffer = buffer
        self.size = int(size)
        self._view = memoryview(buffer.data).cast("B")
        if not 0 <= self.size <= len(self._view):
            raise ValueError(f"size {size} is outside the buffer of {len(self._view)} bytes")
        self._fd = -1
        self._tmp: str | None = None
        self._issued = 0  # bytes handed to the writer thread
        self._writer: Any = None
        self._pending: list[Any] = []
        self.direct = self._open()

    def _open(self) -> bool:
        flag = getattr(os, "O_DIRECT", None)
        if flag is None or self.buffer.ctypes.data % DIRECT_ALIGN or len(self._view) % DIRECT_ALIGN:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        try:
            self._fd = os.open(self._tmp, os.O_WRONLY | flag)
        except OSError as e:
            self._remove()
            if e.errno != errno.EINVAL:  # EINVAL: this file system has no O_DIRECT
                raise
            return False
        return True

    def _write(self, start: int, end: int) -> None:
        view = self._view[start:end]
        done = 0
        while done < len(view):
            n = os.pwrite(self._fd, view[done:], start + done)
            if n <= 0:
                raise OSError(errno.EIO, f"write returned {n}")
            done += n

    def _issue(self, end: int) -> None:
        if end <= self._issued:
            return
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="direct-write")
        self._pending.append(self._writer.submit(self._write, self._issued, end))
        self._issued = end

    def ready(self, nbytes: int) -> None:
        """The first ``nbytes`` of the buffer are final: write their whole blocks in the background."""
        if self.direct:
            end = min(nbytes, len(self._view)) // DIRECT_ALIGN * DIRECT_ALIGN
            if end - self._issued >= self.CHUNK:
                self._issue(end)

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        error: BaseException | None = None
        for f in pending:
            try:
                f.result()
            except BaseException as e:  # the first error; every write has ended after the loop
                error = error or e
        if error is not None:
            raise error

    def commit(self, *, buffered: bool = True) -> bool:
        """Write the rest and publish the file; returns whether ``O_DIRECT`` wrote it.

        Raises:
            OSError: the file could not be written (a full disk); nothing is left behind and
                ``path`` is untouched.
        """
        try:
            if self.direct:
                try:
                    self._issue(len(self._view))
                    self._wait()
                    os.ftruncate(self._fd, self.size)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self.direct = False  # refused this alignment after all: write it plainly
                self._close()
                if self.direct:
                    assert self._tmp is not None
                    _publish(self._tmp, self.path)
                    self._tmp = None
                    return True
                self._remove()
            if buffered:
                with atomic_write(self.path, "wb") as f:
                    f.write(self._view[: self.size])
            return False
        finally:
            self.abort()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _remove(self) -> None:
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)
            self._tmp = None

    def abort(self) -> None:
        """Stop: wait for writes in flight, close and remove the temporary file (if not published)."""
        with contextlib.suppress(BaseException):
            self._wait()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        self._close()
        self._remove()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


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
