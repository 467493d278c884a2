"""Stopping a training run cleanly: SIGTERM (SLURM, Kubernetes) and Ctrl-C become a flag.

The loop reads the flag after each step, writes a checkpoint atomically and raises
:class:`~collapsekit.errors.TrainingInterrupted`, so a stopped run always resumes.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["StopSignals"]


class StopSignals:
    """SIGINT and SIGTERM become a flag the loop reads after each step (main thread only).

    The step in flight finishes, a checkpoint is written atomically and training raises
    :class:`TrainingInterrupted`. A second Ctrl-C aborts at once (KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

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
