"""Load preprocessed volumes (cached, in parallel), whole splits, and summarise a dataset for ``data check``.

Volumes that are not cached yet are preprocessed in worker processes
(``concurrent.futures.ProcessPoolExecutor`` on a ``forkserver`` context where the platform has one,
else ``spawn``; never ``fork``, which is unsafe once torch has started its thread pools). Each
worker runs torch and OpenMP on one thread and ignores Ctrl-C (the caller shuts the pool down).
With a disk cache a worker writes the entry itself and the caller memory-maps it, so no volume
crosses a pipe; without one the volume is sent back and kept in the in-memory cache (small sets).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import numpy as np

from collapsekit.data._workers import available_cpus, rank_order, worker_pool
from collapsekit.data.cache import (
    CACHE_IMAGE_DTYPE,
    MEMORY,
    EntryImage,
    cache_key,
    read_disk,
    remove_stale_temporaries,
    write_disk,
)
from collapsekit.data.layouts import discover
from collapsekit.data.preprocess import PreprocessConfig, preprocess_record
from collapsekit.data.spec import PhantomConfig
from collapsekit.data.volume import CaseRecord, Volume
from collapsekit.errors import CollapsekitError, ConfigError, DataError, OutputError
from collapsekit.options import look_up_option
from collapsekit.progress import (
    Message,
    ProgressCallback,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    emit,
)

__all__ = ["LoadOptions", "load_volumes", "load_split"]

#: With ``workers=None`` a pool is started only when the serial work left is estimated to take
#: longer than this (starting workers and importing torch in them costs a few seconds).
POOL_MIN_SECONDS = 4.0


@dataclass(frozen=True)
class LoadOptions:
    """How (not what) volumes are loaded: the disk cache, the worker processes, the ranks.

    None of these change a single number of the loaded volumes; they are runtime settings, passed
    explicitly from the entry point (the CLI builds one from ``--cache-dir``,
    ``--preprocess-workers`` and the environment) down to :func:`load_volumes`. The library reads
    no environment variable for them.

    Args:
        cache_dir: directory of the disk cache of preprocessed volumes (created if missing;
            ``~`` expanded); ``None``: the in-memory cache only.
        workers: preprocessing worker processes. ``None``: every available core, and a pool is
            started only when the serial work left (timed on the first volume) exceeds
            :data:`POOL_MIN_SECONDS`. ``0`` or ``1``: in this process. ``N >= 2``: a pool of
            ``min(N, volumes to decode)`` workers.
        direct_io: write large cache entries with ``O_DIRECT`` where the file system allows it
            (a fraction of the CPU of a buffered write); ``False`` for network file systems, where
            each such write is a synchronous round trip (the CLI: ``COLLAPSEKIT_CACHE_DIRECT=0``).
        rank, world_size: this process among the processes sharing the cache directory (torchrun's
            ``RANK``/``WORLD_SIZE``): rank r of R starts at the r/R-th volume, so ranks split the
            preprocessing instead of each decoding every volume.
        local_world_size: processes on this node (torchrun's ``LOCAL_WORLD_SIZE``); ``workers=None``
            uses this process's share of the cores.

    Raises:
        ConfigError: ``workers < 0``, ``world_size``/``local_world_size`` < 1 or ``rank`` outside
            ``0 .. world_size-1``.
    """

    cache_dir: Path | None = None
    workers: int | None = None
    direct_io: bool = True
    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    def __post_init__(self) -> None:
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())
        if self.workers is not None and self.workers < 0:
            raise ConfigError(
                f"preprocess workers must be >= 0 (0: in this process), got {self.workers}"
            )
        if self.world_size < 1 or self.local_world_size < 1:
            raise ConfigError(
                f"world_size and local_world_size must be >= 1, got {self.world_size} and "
                f"{self.local_world_size}"
            )
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in 0..{self.world_size - 1}, got {self.rank}")


def _preprocess_job(
    record: CaseRecord,
    preprocess: PreprocessConfig,
    phantom: PhantomConfig | None,
    cache: Path | None,
    digest: str,
    key_json: str,
    direct: bool = True,
) -> tuple[Volume | None, bool]:
    """Worker body: preprocess one case -> ``(volume, computed)``.

    With a disk cache the entry is written and the volume is ``None`` (the caller maps the entry);
    an entry another process (another rank) wrote since the caller looked is used as it is
    (``computed`` False).
    """
    if cache is not None and read_disk(cache, digest, key_json, record.case_id) is not None:
        return None, False
    if cache is None:
        return preprocess_record(record, preprocess, phantom), True
    # For the disk cache the window writes float16 straight into the bytes of the entry's file,
    # which goes to the disk while the rest is computed (O_DIRECT where the file system has it).
    with EntryImage(cache, digest, record.case_id, direct=direct) as image:
        vol = preprocess_record(
            record, preprocess, phantom, image_dtype=CACHE_IMAGE_DTYPE, sink=image
        )
        write_disk(cache, digest, key_json, vol, image, direct=direct)
    return None, True


@dataclass
class _Meter:
    """Progress of task ``"load"``: decoded volumes per second since the first decode began."""

    progress: ProgressCallback | None
    decoded: int = 0
    t0: float | None = None

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def advance(self, case_id: str, cached: bool) -> None:
        info: dict[str, Any] = {"case": case_id, "cached": cached}
        if not cached:
            self.decoded += 1
            elapsed = time.perf_counter() - (self.t0 or time.perf_counter())
            if elapsed > 0:
                info["vol/s"] = self.decoded / elapsed
        emit(self.progress, TaskAdvanced("load", 1, info))


def load_volumes(
    records: Sequence[CaseRecord],
    preprocess: PreprocessConfig = PreprocessConfig(),
    *,
    phantom: PhantomConfig | None = None,
    options: LoadOptions = LoadOptions(),
    progress: ProgressCallback | None = None,
) -> list[Volume]:
    """Read and preprocess cases, each decoded at most once per process (and per cache directory).

    Lookup order: the process-wide memory cache, then the disk cache in ``options.cache_dir``, then the
    file (or the phantom generator). See :mod:`collapsekit.data.cache` for the key: a changed file
    (size or mtime) or a changed :class:`PreprocessConfig` never reuses an old entry.

    With a cache directory every returned volume is the memory-mapped disk entry (image float16, at
    most :data:`~collapsekit.data.cache.QUANTISATION_ERROR` from the float32 of the uncached
    path; labels exact), also right after it was computed, so a cold and a warm run see the same
    numbers and resident memory does not grow with the number of volumes. Without it volumes are
    float32 arrays held in memory (fine for small sets).

    Args:
        records: cases from :func:`~collapsekit.data.layouts.discover`.
        preprocess: windowing, resampling and slice selection.
        phantom: phantom configuration for records without a file (default :class:`PhantomConfig`).
        options: the cache directory, worker processes and ranks (:class:`LoadOptions`).
        progress: receives ``TaskStarted/TaskAdvanced/TaskFinished`` for task ``"load"``; each advance
            carries ``{"case": id, "cached": bool}`` and, for decoded volumes, ``"vol/s"``.

    With several ranks (``options.rank``, ``options.world_size``) each rank starts at a different
    point of the list and every job looks in the disk cache again just before decoding, so ranks sharing a cache
    directory split the work instead of each decoding every volume.

    Returns:
        One :class:`Volume` per record, in order. Volumes are shared with the cache and read-only.

    Raises:
        DataError: a missing, unreadable, 2D/4D, mismatched or non-integer-label file (the message
            names it; raised as the same one-line error whether it happened in a worker or not,
            and the pool is shut down), or a worker process that died (e.g. out of memory).
        OutputError: the cache directory or an entry cannot be written (read-only, full disk).
    """
    explicit = options.workers is not None
    n_workers = options.workers if explicit else available_cpus(options.local_world_size)
    assert n_workers is not None
    cache, direct = options.cache_dir, options.direct_io
    out: list[Volume | None] = [None] * len(records)
    todo: dict[str, list[int]] = {}  # digest -> positions of the records that need it
    keys: dict[str, str] = {}
    meter = _Meter(progress)
    emit(progress, TaskStarted("load", total=len(records), description="loading volumes"))
    for i, rec in enumerate(records):
        digest, key_json = cache_key(rec, preprocess, phantom)
        vol = MEMORY.get(digest)
        if vol is None and cache is not None and digest not in todo:
            damaged: list[str] = []
            vol = read_disk(cache, digest, key_json, rec.case_id, damaged)
            for note in damaged:  # a damaged entry is rebuilt below, and the user told
                emit(progress, Message(note, level="warning"))
        if vol is None:
            todo.setdefault(digest, []).append(i)
            keys[digest] = key_json
            continue
        MEMORY[digest] = out[i] = vol
        meter.advance(rec.case_id, cached=True)

    def done(digest: str, result: tuple[Volume | None, bool]) -> None:
        vol, computed = result
        if cache is not None:  # always hand out the disk entry: same numbers cold or warm
            first = records[todo[digest][0]]
            vol = read_disk(cache, digest, keys[digest], first.case_id)
            if vol is None:
                raise DataError(
                    f"cache entry of case {first.case_id} in {cache} could not be read back right "
                    "after it was written (another process deleting the cache? full disk?)"
                )
        assert vol is not None
        for a in (vol.image, vol.label):  # a volume sent back by a worker arrives writable
            if a is not None and a.flags.writeable:
                a.flags.writeable = False
        MEMORY[digest] = vol
        for i in todo[digest]:
            out[i] = vol
            meter.advance(records[i].case_id, cached=not computed)

    jobs = rank_order(
        [(d, records[pos[0]]) for d, pos in todo.items()], options.rank, options.world_size
    )
    if cache is not None and jobs:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the cache directory {cache}: {e.strerror}") from None
        remove_stale_temporaries(cache)
    meter.start()
    while jobs and not explicit:  # time one decode here, then decide whether a pool pays
        t0 = time.perf_counter()
        digest, rec = jobs.pop(0)
        result = _preprocess_job(rec, preprocess, phantom, cache, digest, keys[digest], direct)
        done(digest, result)
        if result[1]:
            serial = (time.perf_counter() - t0) * len(jobs)
            if serial * (1 - 1 / max(1, min(n_workers, len(jobs)))) < POOL_MIN_SECONDS:
                n_workers = 1
            break
    n_workers = min(n_workers, len(jobs))
    if n_workers >= 2:
        _run_pool(jobs, n_workers, preprocess, phantom, cache, keys, done, direct)
    else:
        for digest, rec in jobs:
            job = _preprocess_job(rec, preprocess, phantom, cache, digest, keys[digest], direct)
            done(digest, job)
    emit(progress, TaskFinished("load", {"volumes": len(out), "decoded": meter.decoded}))
    return [v for v in out if v is not None]


def _run_pool(
    jobs: list[tuple[str, CaseRecord]],
    workers: int,
    preprocess: PreprocessConfig,
    phantom: PhantomConfig | None,
    cache: Path | None,
    keys: dict[str, str],
    done: Any,
    direct: bool,
) -> None:
    """Preprocess ``jobs`` on ``workers`` processes, calling ``done(digest, result)`` as each ends.

    The first error stops everything: queued jobs are cancelled, the pool is shut down, and a
    collapsekit error from a worker is re-raised as itself without the worker's traceback.
    """
    pool = worker_pool(workers)
    running: dict[Future[tuple[Volume | None, bool]], tuple[str, CaseRecord]] = {}
    # Finished futures arrive on a queue written in C, not through concurrent.futures.wait():
    # wait() holds every future's lock while it sets up, and a Ctrl-C or SIGTERM raised in there
    # left a lock held forever, so the pool's shutdown (which cancels those futures) hung.
    finished: SimpleQueue[Future[tuple[Volume | None, bool]]] = SimpleQueue()
    try:
        for digest, rec in jobs:
            fut = pool.submit(
                _preprocess_job, rec, preprocess, phantom, cache, digest, keys[digest], direct
            )
            running[fut] = (digest, rec)
            fut.add_done_callback(finished.put)
        while running:
            fut = finished.get()
            digest, rec = running.pop(fut)
            try:
                result = fut.result()
            except CollapsekitError as e:
                raise e.with_traceback(None) from None
            except BrokenProcessPool:
                cases = sorted({rec.case_id, *(r.case_id for _, r in running.values())})
                raise DataError(
                    f"a preprocessing worker process died while preprocessing case {rec.case_id}"
                    + (f" ({rec.image})" if rec.image else "")
                    + f" with {len(cases)} cases pending: killed (out of memory?) or could not "
                    "start (a script must guard its top level with `if __name__ == "
                    "'__main__':`); retry with fewer --preprocess-workers, or 0"
                ) from None
            done(digest, result)
    finally:
        # Ctrl-C, SIGTERM or an error: queued jobs are cancelled and the volumes being decoded
        # finish (a worker killed while it sends a result would leave the pool's reader thread
        # blocked on half a message, and shutdown with it).
        pool.shutdown(wait=True, cancel_futures=True)


def load_split(
    dataset: str,
    data_dir: str | Path | None = None,
    split: str = "training",
    preprocess: PreprocessConfig = PreprocessConfig(),
    *,
    phantom: PhantomConfig | None = None,
    options: LoadOptions = LoadOptions(),
    progress: ProgressCallback | None = None,
) -> list[Volume]:
    """``discover`` + ``load_volumes`` for one split.

    Args:
        dataset, data_dir, phantom: as in :func:`~collapsekit.data.layouts.discover`.
        split: ``training``, ``validation``, ``test`` or ``all`` (every case with an image, e.g.
            for pretraining; labels are loaded where they exist).
        preprocess, options, progress: as in :func:`load_volumes`.

    Raises:
        LayoutError, DataError, ConfigError: see ``discover`` and ``load_volumes``.
    """
    split = look_up_option(split, ("training", "validation", "test", "all"), "split")
    index = discover(dataset, data_dir, phantom)
    for note in index.notes:
        emit(progress, Message(note, level="warning"))
    return load_volumes(
        index.split(split),
        preprocess,
        phantom=index.phantom,
        options=options,
        progress=progress,
    )


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis: the column norms of the affine's ``3x3`` block."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
