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

from collapsekit.data._direct_io import DIRECT_ALIGN, DirectFile, NpyBuffer, aligned_buffer
from collapsekit.data.cache import DIRECT_MIN_BYTES, EntryImage, _save_array


def atomic_write_direct(path, buf, size) -> bool:
    """An O_DIRECT write or nothing: False where O_DIRECT is refused."""
    with DirectFile(path, buf, size) as f:
        return f.commit(buffered=False)


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


def test_entry_image_is_written_while_it_is_computed(tmp_path, monkeypatch):
    """The worker's sink: the image is computed in the file's bytes, finished slices go to the disk
    in the background (several O_DIRECT writes before the commit), and the file equals np.save's."""
    a = _image(shape=(256, 256, 40))  # 5 MiB: more than one background chunk
    writes = []
    real_pwrite = os.pwrite

    def spy(fd, data, offset):
        writes.append((offset, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", spy)
    monkeypatch.setattr(NpyBuffer, "of", classmethod(lambda cls, x: pytest.fail("copied")))
    with EntryImage(tmp_path, "d" * 32, "case1") as sink:
        out = sink.allocate(a.shape, a.dtype)
        for z in range(a.shape[2]):
            out[:, :, z] = a[:, :, z]
            sink.done(z + 1)
        # bytes handed to the background writer before the commit (its pwrites may still run)
        issued = sink.file._issued if sink.file is not None and sink.file.direct else 0
        assert sink.holds(out) and not sink.holds(a)
        sink.commit()
    path = tmp_path / ("d" * 32 + ".image.npy")
    assert path.read_bytes() == _npy_bytes(a)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    if hasattr(os, "O_DIRECT"):
        assert issued >= 4 << 20 and writes[0][0] == 0  # issued before the commit, from the start
        assert sum(n for _, n in writes) >= a.nbytes
        assert all(o % DIRECT_ALIGN == 0 and n % DIRECT_ALIGN == 0 for o, n in writes)


def test_entry_image_error_leaves_nothing(tmp_path):
    a = _image()
    with pytest.raises(RuntimeError, match="decode failed"):
        with EntryImage(tmp_path, "e" * 32, "case1") as sink:
            out = sink.allocate(a.shape, a.dtype)
            out[:, :, :10] = a[:, :, :10]
            sink.done(10)
            raise RuntimeError("decode failed")
    assert list(tmp_path.iterdir()) == []


def test_entry_image_on_a_read_only_cache_is_one_output_error(tmp_path, monkeypatch):
    from collapsekit.errors import OutputError

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(OutputError, match=r"cache entry of case case7 to .*: Permission denied"):
        with EntryImage(tmp_path, "f" * 32, "case7") as sink:
            sink.allocate((128, 96, 50), np.dtype(np.float16))


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

        def refuse(fd, data, offset):
            raise OSError(errno.EINVAL, "Invalid argument")

        monkeypatch.setattr(os, "pwrite", refuse)  # O_DIRECT writes are pwrite; buffered are not
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

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
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
    # The module is loaded from its file (it imports only the standard library), not through
    # the collapsekit.data package, whose imports (torch, MONAI) took seconds per process.
    from collapsekit.data import _workers

    code = textwrap.dedent(
        """
        import importlib.util, resource, sys
        spec = importlib.util.spec_from_file_location("_workers", sys.argv[2])
        workers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(workers)
        tune_allocator = workers.tune_allocator
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
            [sys.executable, "-c", code, tuned, _workers.__file__],
            capture_output=True,
            text=True,
            check=True,
        )
        out[tuned] = int(proc.stdout.strip())
    assert out["0"] >= 16_000 and out["1"] < 1_000


def test_direct_writes_can_be_turned_off(tmp_path, monkeypatch):
    """``direct=False`` (``LoadOptions(direct_io=False)``, the CLI's ``COLLAPSEKIT_CACHE_DIRECT=0``):
    no O_DIRECT open, the same file."""
    real_open = os.open

    def no_direct(path, flags, *args):
        assert not flags & getattr(os, "O_DIRECT", 0), "O_DIRECT used although turned off"
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    a = _image()
    _save_array(tmp_path / "x.npy", a, direct=False)
    with EntryImage(tmp_path, "a" * 32, "case1", direct=False) as sink:
        sink.allocate(a.shape, a.dtype)[...] = a
        sink.done(a.shape[2])
        assert sink.file is None
        sink.commit()
    for name in ("x.npy", "a" * 32 + ".image.npy"):
        assert (tmp_path / name).read_bytes() == _npy_bytes(a)
    assert len(list(tmp_path.iterdir())) == 2
