"""Stopping a training run cleanly: SIGTERM (SLURM, Kubernetes) and Ctrl-C become a flag.

The loop reads the flag after each step, writes a checkpoint atomically and raises
:class:`~collapsekit.errors.TrainingInterrupted`, so a stopped run always resumes. Under torchrun
the ranks agree on the flag after every step (an all-reduce of one integer): a signal that reaches
one rank only (``kill`` of one PID, one node's processes) stops every rank after the same step,
instead of leaving the others blocked in their next collective.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from collapsekit.errors import Terminated, TrainingInterrupted
from collapsekit.train.distributed import DistContext

__all__ = ["StopSignals", "Terminated", "ignore_stop_signals", "before_first_step"]


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def before_first_step(run_dir: Path) -> Iterator[None]:
    """Turn Ctrl-C and SIGTERM while a run prepares (volumes load, the model is built) into one
    line: ``TrainingInterrupted("stopped by SIGTERM before the first step; nothing was written
    to RUN")`` with exit code 128 + the signal.

    Python's default SIGTERM action ends the process with no message at all (SLURM preempts at
    any time); here SIGTERM raises :class:`Terminated` in the main thread while the block runs.
    Nothing of the run is written before the first step (the run directory is created after).
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        yield
    except KeyboardInterrupt as e:
        signum = int(getattr(e, "signum", signal.SIGINT))
        raise TrainingInterrupted(
            f"stopped by {signal.Signals(signum).name} before the first step; nothing was "
            f"written to {run_dir}",
            exit_code=128 + signum,
        ) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class StopSignals:
    """SIGINT and SIGTERM become a flag the loop reads after each step (main thread only).

    The step in flight finishes, a checkpoint is written atomically and training raises
    :class:`TrainingInterrupted`. A second Ctrl-C aborts at once (KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        #: the signal this process received (set by the handler, at any time)
        self.received: int | None = None
        #: the signal all ranks agreed to stop on at the last :meth:`poll` (what the loop obeys)
        self.agreed: int | None = None
        self._previous: dict[int, Any] = {}

    def poll(self, ctx: DistContext) -> int | None:
        """Agree across ranks whether to stop after this step; return the signal, or None.

        Every rank must call it after the same step. On one process it is :attr:`received`; under
        torchrun it is the largest signal number any rank has received (SIGTERM 15 over SIGINT 2).
        """
        if self.agreed is None:
            if ctx.distributed:
                flag = torch.tensor([self.received or 0], dtype=torch.int64, device=ctx.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                self.agreed = int(flag.item()) or None
            else:
                self.agreed = self.received
        return self.agreed

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoader: its workers ignore SIGINT and SIGTERM.

    Ctrl-C in a terminal and SLURM's SIGTERM reach every process of the group. A worker that died
    of it would make the main process fail ("DataLoader worker is killed by signal") before it
    can finish the step and checkpoint; the main process alone decides, and shuts the workers down.
    """
    for s in StopSignals.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
