"""How disk-cache entries are written: O_DIRECT from the array's own .npy buffer (the same bytes as
``np.save``), the buffered fallback, failures, and the workers' allocator setting."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from collapsekit.data.cache import DIRECT_MIN_BYTES, NpyBuffer, _save_array
from collapsekit.serialization import DIRECT_ALIGN, aligned_buffer, atomic_write_direct


def _npy_bytes(a: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, np.asfortranarray(a), allow_pickle=False)
    return f.getvalue()


def _image(shape=(128, 96, 50), dtype=np.float16) -> np.ndarray:
    a = np.random.default_rng(0).uniform(0, 1, shape).astype(dtype)
    return np.asfortranarray(a)


def test_aligned_buffer():
    for n in (0, 1, 4095, 4096, 4097, 10**6):
        b = aligned_buffer(n)
        assert b.dtype == np.uint8 and b.ctypes.data % DIRECT_ALIGN == 0
        assert len(b) % DIRECT_ALIGN == 0 and max(n, 1) <= len(b) < max(n, 1) + DIRECT_ALIGN


@pytest.mark.parametrize("dtype", [np.float16, np.uint8, np.int32])
def test_npy_buffer_is_the_npy_file(dtype):
    a = (
        _image(dtype=dtype)
        if dtype == np.float16
        else np.asfortranarray(np.arange(128 * 96 * 50).reshape(128, 96, 50).astype(dtype))
    )
    b = NpyBuffer(a.shape, a.dtype)
    assert b.array.flags.f_contiguous and b.array.flags.writeable and b.holds(b.array)
    b.array[...] = a
    assert bytes(b.buffer[: b.size]) == _npy_bytes(a)
    assert not b.holds(a)  # another array with the same shape: not this buffer
    assert bytes(NpyBuffer.of(a).buffer[: b.size]) == _npy_bytes(a)


def test_direct_write_gives_np_save_bytes_and_usual_permissions(tmp_path):
    a = _image()
    assert a.nbytes >= DIRECT_MIN_BYTES
    calls = []
    real_open = os.open

    def spy(path, flags, *args):
        calls.append(bool(flags & getattr(os, "O_DIRECT", 0)))
        return real_open(path, flags, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", spy)
        _save_array(tmp_path / "x.npy", a)
    if sys.platform == "linux":
        assert calls.count(True) == 1  # one O_DIRECT open (of the temporary file)
    assert (tmp_path / "x.npy").read_bytes() == _npy_bytes(a)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.npy").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]  # no temporary file left
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert m.flags.f_contiguous and np.array_equal(m, a)


def test_buffer_written_without_a_copy(tmp_path, monkeypatch):
    a = _image()
    b = NpyBuffer.of(a)
    monkeypatch.setattr(NpyBuffer, "of", classmethod(lambda cls, x: pytest.fail("copied")))
    _save_array(tmp_path / "x.npy", b.array, b)
    assert (tmp_path / "x.npy").read_bytes() == _npy_bytes(a)


@pytest.mark.parametrize("how", ["no_flag", "einval_open", "einval_write"])
def test_falls_back_to_a_buffered_write(tmp_path, monkeypatch, how):
    """A platform or file system without O_DIRECT: the same file, written the usual way."""
    a = _image()
    if how == "no_flag":
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    elif how == "einval_open":
        real_open = os.open

        def no_direct(path, flags, *args):
            if flags & getattr(os, "O_DIRECT", 0):
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *args)

        monkeypatch.setattr(os, "open", no_direct)
    else:
        real_write = os.write
        monkeypatch.setattr(
            os,
            "write",
            lambda fd, data: (
                (_ for _ in ()).throw(OSError(errno.EINVAL, "Invalid argument"))
                if len(data) % DIRECT_ALIGN == 0 and len(data) > 2**20
                else real_write(fd, data)
            ),
        )
    buf = aligned_buffer(a.nbytes)
    assert atomic_write_direct(tmp_path / "y.bin", buf, a.nbytes) is False
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file
    _save_array(tmp_path / "x.npy", a)
    assert (tmp_path / "x.npy").read_bytes() == _npy_bytes(a)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="O_DIRECT is Linux's")
def test_full_disk_raises_and_keeps_the_old_file(tmp_path, monkeypatch):
    old = _image(dtype=np.float16)
    _save_array(tmp_path / "x.npy", old)
    before = (tmp_path / "x.npy").read_bytes()

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        _save_array(tmp_path / "x.npy", _image(dtype=np.float16) * 0)
    assert (tmp_path / "x.npy").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_direct_write_checks_its_buffer(tmp_path):
    buf = aligned_buffer(8192)
    with pytest.raises(ValueError, match="outside the buffer"):
        atomic_write_direct(tmp_path / "x", buf, 8193)
    assert atomic_write_direct(tmp_path / "x", buf[1:4097], 10) is False  # misaligned address
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_tune_allocator_reuses_volume_sized_blocks():
    """After ``tune_allocator`` a freed 64 MiB block is reused: allocating it again faults in
    (almost) no pages, where glibc's default unmaps it and faults all 16,384 in again."""
    code = textwrap.dedent(
        """
        import resource, sys
        from collapsekit.data.loading import tune_allocator
        if sys.argv[1] == "1":
            assert tune_allocator()
        def faults():
            a = bytearray(64 << 20)
            a[::4096] = b"\\1" * len(a[::4096])
            del a
        faults()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        faults()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        """
    )
    out = {}
    for tuned in ("0", "1"):
        proc = subprocess.run(
            [sys.executable, "-c", code, tuned], capture_output=True, text=True, check=True
        )
        out[tuned] = int(proc.stdout.strip())
    assert out["0"] >= 16_000 and out["1"] < 1_000
