"""Writing large files with ``O_DIRECT``: aligned buffers, a ``.npy`` file built in place, and a
writer that sends finished parts to the disk from a background thread, then publishes atomically.

Private to the data layer (the disk cache of :mod:`collapsekit.data.cache` is its one user); not
part of the public API.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# ``_publish`` is the one place that gives a finished temporary file its permissions and moves it
# into place; atomic_write and DirectFile must publish files the same way.
from collapsekit.serialization import _publish, atomic_write

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


class NpyBuffer:
    """A Fortran-ordered array that lives inside the bytes of its own ``.npy`` file.

    The buffer holds the ``.npy`` header, then the array's data, aligned for ``O_DIRECT``
    (:func:`aligned_buffer`), so the array can be computed in place
    (see :class:`EntryImage`) and written with no copy.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        dtype = np.dtype(dtype)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": True,
                "shape": tuple(int(n) for n in shape),
            },
        )
        head = header.getvalue()
        self.header_bytes = len(head)
        self.size = len(head) + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.buffer = aligned_buffer(self.size)
        self.buffer[: len(head)] = np.frombuffer(head, dtype=np.uint8)
        self.buffer[self.size :] = 0
        self.array = self.buffer[len(head) : self.size].view(dtype).reshape(shape, order="F")

    @classmethod
    def of(cls, array: np.ndarray) -> NpyBuffer:
        """A buffer holding a copy of ``array``."""
        b = cls(array.shape, array.dtype)
        b.array[...] = array
        return b

    def holds(self, array: np.ndarray) -> bool:
        """Whether ``array`` is this buffer's array (the same memory, shape and dtype)."""
        return (
            array.shape == self.array.shape
            and array.dtype == self.array.dtype
            and array.flags.f_contiguous
            and (array.size == 0 or array.ctypes.data == self.array.ctypes.data)
        )
