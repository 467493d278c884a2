"""Concurrent writers: real processes caching the same volumes at once never leave a bad entry."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from collapsekit.data import CaseRecord, LoadOptions, clear_cache, load_volumes
from collapsekit.data.cache import entry_files, read_disk, write_disk
from collapsekit.data.volume import Volume

WRITERS = 4
ROUNDS = 4
DIGESTS = ("a" * 32, "b" * 32, "c" * 32)


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["collapsekit.data.loading"])  # import torch once, not per child
    return ctx


def _run(procs, out=None) -> list:
    """Start ``procs``, collect one item each from ``out`` (before joining: a child that put a
    large item on a queue exits only once it is read), join them; kill any left after a timeout."""
    for p in procs:
        p.start()
    results = []
    try:
        if out is not None:
            results = [out.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=300)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return results


def _volume(i: int) -> Volume:
    """Entry ``i``: 4 MB of float16 on disk, so writes overlap in time."""
    rng = np.random.default_rng(i)
    image = np.asfortranarray(rng.random((256, 256, 32), dtype=np.float32))
    label = np.asfortranarray(rng.integers(0, 14, (256, 256, 32), dtype=np.uint8))
    return Volume(f"case{i}", image, label, np.eye(4), np.arange(0, 32, 2))


def _key(i: int) -> str:
    return f'{{"case": "case{i}"}}'


def _writer(cache: str, rank: int, barrier, errors) -> None:
    vols = [_volume(i) for i in range(len(DIGESTS))]
    rng = np.random.default_rng(rank)
    for _ in range(ROUNDS):
        barrier.wait(timeout=120)  # a writer that died breaks the barrier, not the test run
        for i in rng.permutation(len(DIGESTS)):  # every writer hits every entry, in its own order
            write_disk(Path(cache), DIGESTS[i], _key(i), vols[i])
            # read straight back: a reader between two writers sees a whole entry or none
            got = read_disk(Path(cache), DIGESTS[i], _key(i), f"case{i}")
            if got is None:
                errors.put(f"rank {rank}: entry {i} unreadable right after writing it")
            elif not (
                np.array_equal(got.image, vols[i].image.astype(np.float16))
                and np.array_equal(got.label, vols[i].label)
            ):
                errors.put(f"rank {rank}: entry {i} differs from its reference")


@pytest.mark.slow
def test_concurrent_writers_never_corrupt_an_entry(tmp_path):
    ctx = _context()
    barrier, errors = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(str(tmp_path), r, barrier, errors))
        for r in range(WRITERS)
    ]
    _run(procs)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    for i, digest in enumerate(DIGESTS):
        ref = _volume(i)
        got = read_disk(tmp_path, digest, _key(i), f"case{i}")
        assert got is not None
        np.testing.assert_array_equal(got.image, ref.image.astype(np.float16))
        np.testing.assert_array_equal(got.label, ref.label)
        np.testing.assert_array_equal(got.slices, ref.slices)
    # every temporary file was renamed into place: only the entries' own files are left
    names = {p.name for d in DIGESTS for p in entry_files(tmp_path, d).values()}
    assert {p.name for p in tmp_path.iterdir()} == names


def _loader(data: str, cache: str, barrier, out) -> None:
    rec = [CaseRecord("ct", Path(data))]
    barrier.wait(timeout=120)
    vol = load_volumes(rec, options=LoadOptions(cache_dir=Path(cache), workers=0))[0]
    out.put(np.array(vol.image).tobytes())


@pytest.mark.slow
def test_two_runs_loading_the_same_file_at_once(tmp_path, nifti, ct):
    # The "two torchrun ranks" case end to end: both decode, both write, both read an entry.
    data = nifti(tmp_path / "ct.nii.gz", ct(0, shape=(64, 64, 16)))
    ctx = _context()
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_loader, args=(str(data), str(tmp_path / "c"), barrier, out))
        for _ in range(2)
    ]
    results = _run(procs, out)
    assert [p.exitcode for p in procs] == [0, 0]
    clear_cache()
    ref = load_volumes([CaseRecord("ct", data)], options=LoadOptions(cache_dir=tmp_path / "c"))[0]
    assert results[0] == results[1] == np.array(ref.image).tobytes()
    assert len(list((tmp_path / "c").glob("*.json"))) == 1


def _rank(data: str, cache: str, rank: int, barrier, out) -> None:
    from collapsekit.data import discover
    from collapsekit.progress import TaskFinished

    events: list = []
    barrier.wait(timeout=120)
    options = LoadOptions(cache_dir=Path(cache), workers=0, rank=rank, world_size=2)
    vols = load_volumes(
        discover("btcv", data).split("all"), options=options, progress=events.append
    )
    done = [e for e in events if isinstance(e, TaskFinished)][0]
    out.put((rank, done.info["decoded"], [np.array(v.image).tobytes() for v in vols]))


@pytest.mark.slow
def test_two_ranks_split_the_decoding(tmp_path):
    from collapsekit.data import write_phantom_dataset

    write_phantom_dataset(tmp_path / "btcv", cases=6, size=96, slices=24, validation=0)
    ctx = _context()
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_rank, args=(str(tmp_path / "btcv"), str(tmp_path / "c"), r, barrier, out)
        )
        for r in range(2)
    ]
    results = sorted(_run(procs, out))
    assert [p.exitcode for p in procs] == [0, 0]
    (_, d0, v0), (_, d1, v1) = results
    assert v0 == v1  # both ranks got the same volumes
    assert 6 <= d0 + d1 < 12, (d0, d1)  # each volume decoded at least once, not by both ranks
    assert len(list((tmp_path / "c").glob("*.json"))) == 6
