"""Load preprocessed volumes (cached, in parallel), whole splits, and summarise a dataset for ``data check``.

Volumes that are not cached yet are preprocessed in worker processes
(``concurrent.futures.ProcessPoolExecutor`` on a ``forkserver`` context where the platform has one,
else ``spawn``; never ``fork``, which is unsafe once torch has started its thread pools). Each
worker runs torch and OpenMP on one thread and ignores Ctrl-C (the caller shuts the pool down).
With a disk cache a worker writes the entry itself and the caller memory-maps it, so no volume
crosses a pipe; without one the volume is sent back and kept in the in-memory cache (small sets).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np

from collapsekit.data.cache import (
    CACHE_IMAGE_DTYPE,
    MEMORY,
    EntryImage,
    cache_key,
    read_disk,
    remove_stale_temporaries,
    write_disk,
)
from collapsekit.data.dicom import series_summary
from collapsekit.data.labels import ABDOMENCT1K_LABELS, BTCV_LABELS
from collapsekit.data.layouts import discover
from collapsekit.data.preprocess import PreprocessConfig, preprocess_record
from collapsekit.data.spec import PhantomConfig
from collapsekit.data.validate import check_label_map, check_labelled
from collapsekit.data.volume import CaseRecord, Volume
from collapsekit.errors import CollapsekitError, ConfigError, DataError, OutputError
from collapsekit.options import look_up_option
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit

__all__ = [
    "POOL_MIN_SECONDS",
    "load_defaults",
    "load_volumes",
    "load_split",
    "check_dataset",
    "available_cpus",
    "tune_allocator",
    "voxel_spacing",
]

#: With ``workers=None`` a pool is started only when the serial work left is estimated to take
#: longer than this (starting workers and importing torch in them costs a few seconds).
POOL_MIN_SECONDS = 4.0


@dataclass(frozen=True)
class _LoadDefaults:
    workers: int | None = None
    cache_dir: Path | None = None


_DEFAULTS: ContextVar[_LoadDefaults] = ContextVar(
    "collapsekit_load_defaults",
    default=_LoadDefaults(),  # noqa: B039 - frozen, so sharing it is safe
)


@contextmanager
def load_defaults(
    *, workers: int | None = None, cache_dir: str | Path | None = None
) -> Iterator[None]:
    """Defaults for ``workers`` and ``cache_dir`` of every :func:`load_volumes` call inside the block.

    What the CLI's ``--preprocess-workers`` and ``--cache-dir`` set around a command, so options
    that change how (not what) data is loaded reach the loader without being threaded through
    every evaluation function. Explicit arguments of :func:`load_volumes` win; ``None`` leaves
    the enclosing default.
    """
    cur = _DEFAULTS.get()
    token = _DEFAULTS.set(
        _LoadDefaults(
            workers=cur.workers if workers is None else workers,
            cache_dir=cur.cache_dir if cache_dir is None else Path(cache_dir).expanduser(),
        )
    )
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def available_cpus() -> int:
    """CPU cores for this process's preprocessing workers: the cores it may run on (its affinity
    mask where the OS has one), divided among the ranks torchrun started on this node
    (``$LOCAL_WORLD_SIZE``), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_ranks = 1
    return max(1, cores // local_ranks)


#: ``mallopt`` parameters of glibc (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Make glibc's ``malloc`` keep and reuse freed blocks up to ``threshold`` bytes.

    By default glibc serves every block over 32 MiB (a decoded volume, its preprocessed image) with
    a fresh ``mmap`` and unmaps it on ``free``, so each volume pays one page fault per 4 KiB on
    first touch: 26,000 faults and 0.08 s of kernel time for a 512² x 100 volume, a quarter of its
    ``.nii.gz`` decode. With ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` raised, the next
    volume reuses the same pages. Called in each preprocessing worker (short-lived processes, whose
    peak heap is a few volumes); a no-op returning False where the C library is not glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, threshold)
            and libc.mallopt(_M_TRIM_THRESHOLD, threshold)
        )
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return False


def _init_worker() -> None:
    # One thread per worker: N workers on N cores, not N x N threads fighting over them.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    tune_allocator()
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def _preprocess_job(
    record: CaseRecord,
    preprocess: PreprocessConfig,
    phantom: PhantomConfig | None,
    cache: Path | None,
    digest: str,
    key_json: str,
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
    with EntryImage(cache, digest, record.case_id) as image:
        vol = preprocess_record(
            record, preprocess, phantom, image_dtype=CACHE_IMAGE_DTYPE, sink=image
        )
        write_disk(cache, digest, key_json, vol, image)
    return None, True


def _rank_order(jobs: list[tuple[str, CaseRecord]]) -> list[tuple[str, CaseRecord]]:
    """Jobs rotated by torchrun's ``$RANK`` / ``$WORLD_SIZE``: rank r of R starts at job r·n/R.

    Ranks sharing a cache directory then preprocess disjoint parts first and find the rest already
    written (each job checks the cache before decoding), instead of all decoding the same volume.
    """
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return jobs
    if world <= 1 or not 0 <= rank < world:
        return jobs
    k = len(jobs) * rank // world
    return jobs[k:] + jobs[:k]


def _pool(workers: int) -> ProcessPoolExecutor:
    ctx: BaseContext
    if "forkserver" in multiprocessing.get_all_start_methods():
        server = multiprocessing.get_context("forkserver")
        # The server imports torch and MONAI once; every later worker forks from it in ~10 ms.
        server.set_forkserver_preload(["collapsekit.data.loading"])
        ctx = server
    else:
        ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)


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


def _resolve_workers(workers: int | None) -> tuple[int, bool]:
    """``(number of workers, explicit)``; ``None`` means every available core, chosen adaptively."""
    if workers is None:
        workers = _DEFAULTS.get().workers
    if workers is None:
        return available_cpus(), False
    if workers < 0:
        raise ConfigError(f"preprocess workers must be >= 0 (0: in this process), got {workers}")
    return int(workers), True


def load_volumes(
    records: Sequence[CaseRecord],
    preprocess: PreprocessConfig = PreprocessConfig(),
    *,
    phantom: PhantomConfig | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[Volume]:
    """Read and preprocess cases, each decoded at most once per process (and per cache directory).

    Lookup order: the process-wide memory cache, then the disk cache in ``cache_dir``, then the
    file (or the phantom generator). See :mod:`collapsekit.data.cache` for the key: a changed file
    (size or mtime) or a changed :class:`PreprocessConfig` never reuses an old entry.

    With ``cache_dir`` every returned volume is the memory-mapped disk entry (image float16, at
    most :data:`~collapsekit.data.cache.QUANTISATION_ERROR` from the float32 of the uncached
    path; labels exact), also right after it was computed, so a cold and a warm run see the same
    numbers and resident memory does not grow with the number of volumes. Without it volumes are
    float32 arrays held in memory (fine for small sets).

    Args:
        records: cases from :func:`~collapsekit.data.layouts.discover`.
        preprocess: windowing, resampling and slice selection.
        phantom: phantom configuration for records without a file (default :class:`PhantomConfig`).
        cache_dir: directory of the disk cache (created if missing); ``None``: the enclosing
            :func:`load_defaults`, else memory only.
        workers: preprocessing worker processes. ``None``: the enclosing :func:`load_defaults`,
            else every available core, and a pool is started only when the serial work left
            (timed on the first volume) exceeds :data:`POOL_MIN_SECONDS`. ``0`` or ``1``: in this
            process. ``N >= 2``: a pool of ``min(N, volumes to decode)`` workers.
        progress: receives ``TaskStarted/TaskAdvanced/TaskFinished`` for task ``"load"``; each advance
            carries ``{"case": id, "cached": bool}`` and, for decoded volumes, ``"vol/s"``.

    Under torchrun (``$RANK``, ``$WORLD_SIZE``) each rank starts at a different point of the list
    and every job looks in the disk cache again just before decoding, so ranks sharing a cache
    directory split the work instead of each decoding every volume.

    Returns:
        One :class:`Volume` per record, in order. Volumes are shared with the cache and read-only.

    Raises:
        DataError: a missing, unreadable, 2D/4D, mismatched or non-integer-label file (the message
            names it; raised as the same one-line error whether it happened in a worker or not,
            and the pool is shut down), or a worker process that died (e.g. out of memory).
        ConfigError: ``workers < 0``.
        OutputError: the cache directory or an entry cannot be written (read-only, full disk).
    """
    n_workers, explicit = _resolve_workers(workers)
    if cache_dir is None:
        cache_dir = _DEFAULTS.get().cache_dir
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    out: list[Volume | None] = [None] * len(records)
    todo: dict[str, list[int]] = {}  # digest -> positions of the records that need it
    keys: dict[str, str] = {}
    meter = _Meter(progress)
    emit(progress, TaskStarted("load", total=len(records), description="loading volumes"))
    for i, rec in enumerate(records):
        digest, key_json = cache_key(rec, preprocess, phantom)
        vol = MEMORY.get(digest)
        if vol is None and cache is not None and digest not in todo:
            vol = read_disk(cache, digest, key_json, rec.case_id)
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

    jobs = _rank_order([(d, records[pos[0]]) for d, pos in todo.items()])
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
        result = _preprocess_job(rec, preprocess, phantom, cache, digest, keys[digest])
        done(digest, result)
        if result[1]:
            serial = (time.perf_counter() - t0) * len(jobs)
            if serial * (1 - 1 / max(1, min(n_workers, len(jobs)))) < POOL_MIN_SECONDS:
                n_workers = 1
            break
    n_workers = min(n_workers, len(jobs))
    if n_workers >= 2:
        _run_pool(jobs, n_workers, preprocess, phantom, cache, keys, done)
    else:
        for digest, rec in jobs:
            done(digest, _preprocess_job(rec, preprocess, phantom, cache, digest, keys[digest]))
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
) -> None:
    """Preprocess ``jobs`` on ``workers`` processes, calling ``done(digest, result)`` as each ends.

    The first error stops everything: queued jobs are cancelled, the pool is shut down, and a
    collapsekit error from a worker is re-raised as itself without the worker's traceback.
    """
    pool = _pool(workers)
    running: dict[Future[tuple[Volume | None, bool]], tuple[str, CaseRecord]] = {}
    try:
        for digest, rec in jobs:
            fut = pool.submit(
                _preprocess_job, rec, preprocess, phantom, cache, digest, keys[digest]
            )
            running[fut] = (digest, rec)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
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
        pool.shutdown(wait=True, cancel_futures=True)


def load_split(
    dataset: str,
    data_dir: str | Path | None = None,
    split: str = "training",
    preprocess: PreprocessConfig = PreprocessConfig(),
    *,
    phantom: PhantomConfig | None = None,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[Volume]:
    """``discover`` + ``load_volumes`` for one split.

    Args:
        dataset, data_dir, phantom: as in :func:`~collapsekit.data.layouts.discover`.
        split: ``training``, ``validation``, ``test`` or ``all`` (every case with an image, e.g.
            for pretraining; labels are loaded where they exist).
        preprocess, cache_dir, workers, progress: as in :func:`load_volumes`.

    Raises:
        LayoutError, DataError, ConfigError: see ``discover`` and ``load_volumes``.
    """
    split = look_up_option(split, ("training", "validation", "test", "all"), "split")
    index = discover(dataset, data_dir, phantom)
    return load_volumes(
        index.split(split),
        preprocess,
        phantom=index.phantom,
        cache_dir=cache_dir,
        workers=workers,
        progress=progress,
    )


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis: the column norms of the affine's ``3x3`` block."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_dataset(
    dataset: str,
    data_dir: str | Path | None = None,
    phantom: PhantomConfig | None = None,
    preprocess: PreprocessConfig = PreprocessConfig(),
    progress: ProgressCallback | None = None,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Load every case of a dataset and summarise it (``cache_dir``, ``workers``: see :func:`load_volumes`).

    Returns:
        ``{"dataset", "root", "volumes": {"training", "validation", "test"}, "slices": {"training",
        "validation", "test", "total"} (usable slices), "labels": sorted foreground label ids present,
        "spacing": {"min": [x, y, z], "max": [...]}, "shape": {"min": [H, W, Z], "max": [...]}}``;
        spacing and shape are of the preprocessed volumes; ``"dicom"``: the DICOM series among them
        (:func:`~collapsekit.data.dicom.series_summary`: series count, slices, spacing).
        Every label map is checked against the dataset's class set
        (:func:`~collapsekit.data.validate.check_label_map`); ``"segmentation"`` (``btcv`` and
        ``phantom``, else ``None``): ``{"usable", "reason"}``, the verdict of the probe's and
        fine-tuning's own split check (:func:`~collapsekit.data.validate.check_labelled`: labels
        on every training and validation case, a non-empty validation split with an organ in it),
        so ``data check`` and ``probe`` never disagree.

    Raises:
        LayoutError, DataError, ConfigError: the first problem found (a label value outside the
            class set included).
    """
    index = discover(dataset, data_dir, phantom)
    volumes: dict[str, list[Volume]] = {}
    for split in ("training", "validation", "test"):
        volumes[split] = load_volumes(
            index.split(split),
            preprocess,
            phantom=index.phantom,
            cache_dir=cache_dir,
            workers=workers,
            progress=progress,
        )
    every = [v for vs in volumes.values() for v in vs]
    # Every label map against the dataset's class set (BTCV's 13 organs for btcv and the phantom):
    # a value outside it is corrupt data, for any use.
    class_set = {"abdomenct1k": ABDOMENCT1K_LABELS, "btcv": BTCV_LABELS, "phantom": BTCV_LABELS}
    labels: set[int] = set()
    for split, vs in volumes.items():
        for v in vs:
            if v.label is not None:
                labels.update(check_label_map(v, split, class_set.get(index.dataset)) - {0})
    segmentation: dict[str, Any] | None = None
    if index.dataset in ("btcv", "phantom"):
        # Whether the probe and fine-tuning can use the splits: their own validator decides.
        try:
            check_labelled(
                volumes["training"], volumes["validation"], BTCV_LABELS, what="linear probe"
            )
            segmentation = {"usable": True, "reason": None}
        except DataError as e:
            segmentation = {"usable": False, "reason": str(e)}
    slices = {k: int(sum(len(v.slices) for v in vs)) for k, vs in volumes.items()}
    slices["total"] = sum(slices.values())
    records = [r for split in ("training", "validation", "test") for r in index.split(split)]
    dicom = [v for v, r in zip(every, records, strict=True) if r.series_uid is not None]
    spacing = np.array([voxel_spacing(v.affine) for v in every])
    shape = np.array([v.image.shape for v in every])
    return {
        "dataset": index.dataset,
        "root": None if index.root is None else str(index.root),
        "volumes": index.counts(),
        "slices": slices,
        "labels": sorted(labels),
        "spacing": {
            "min": [round(float(x), 4) for x in spacing.min(0)],
            "max": [round(float(x), 4) for x in spacing.max(0)],
        },
        "shape": {"min": [int(x) for x in shape.min(0)], "max": [int(x) for x in shape.max(0)]},
        "dicom": series_summary(dicom),
        "segmentation": segmentation,
    }
