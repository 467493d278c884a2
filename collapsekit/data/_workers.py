"""The preprocessing worker processes: how many, how they start, in which order ranks take jobs.

Private to the data layer (:mod:`collapsekit.data.loading` is its user); not part of the public API.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from typing import TypeVar

T = TypeVar("T")


def available_cpus(local_ranks: int = 1) -> int:
    """CPU cores for this process's preprocessing workers: the cores it may run on (its affinity
    mask where the OS has one), divided among the ``local_ranks`` processes on this node (torchrun's
    ``LOCAL_WORLD_SIZE``), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_ranks))


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


def init_worker() -> None:
    # One thread per worker: N workers on N cores, not N x N threads fighting over them.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    tune_allocator()
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def rank_order(jobs: list[T], rank: int = 0, world_size: int = 1) -> list[T]:
    """Jobs rotated for process ``rank`` of ``world_size``: rank r of R starts at job r·n/R.

    Ranks sharing a cache directory then preprocess disjoint parts first and find the rest already
    written (each job checks the cache before decoding), instead of all decoding the same volume.
    """
    if world_size <= 1 or not 0 <= rank < world_size:
        return jobs
    k = len(jobs) * rank // world_size
    return jobs[k:] + jobs[:k]


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread inside the block (a no-op where the platform has
    no ``pthread_sigmask``); a signal that arrives meanwhile is delivered on leaving it."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    old = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    ctx: BaseContext
    if "forkserver" in multiprocessing.get_all_start_methods():
        server = multiprocessing.get_context("forkserver")
        # The server imports torch and MONAI once; every later worker forks from it in ~10 ms.
        server.set_forkserver_preload(["collapsekit.data.loading"])
        # Started with SIGINT/SIGTERM blocked, which it and every worker forked from it inherit:
        # a Ctrl-C sent to the whole process group (or SLURM's SIGTERM to every process) reaches
        # this process alone, which stops the pool; the server is unprotected while it imports
        # torch and printed a KeyboardInterrupt traceback. Only the start is blocked (it does not
        # wait for the import), so this process still hears the signal at once.
        with stop_signals_blocked():
            multiprocessing.forkserver.ensure_running()
        ctx = server
    else:
        ctx = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker)
