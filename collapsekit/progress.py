"""Progress as an event stream: the library emits typed events, the caller renders them.

The library never prints. Long-running functions take ``progress: ProgressCallback | None``
and call it with the events below; the CLI turns them into rich progress bars and a notebook can
pass ``print`` or its own function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ProgressEvent",
    "TaskStarted",
    "TaskAdvanced",
    "TaskFinished",
    "Message",
    "ProgressCallback",
    "emit",
]


@dataclass(frozen=True)
class ProgressEvent:
    """Base class of every progress event."""


@dataclass(frozen=True)
class TaskStarted(ProgressEvent):
    """A task with ``total`` units of work (``None`` if unknown) began."""

    task: str
    total: int | None = None
    description: str = ""


@dataclass(frozen=True)
class TaskAdvanced(ProgressEvent):
    """``advance`` units of ``task`` are done; ``info`` holds live values (loss, lr, ...)."""

    task: str
    advance: int = 1
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskFinished(ProgressEvent):
    """``task`` completed; ``info`` holds its summary values."""

    task: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Message(ProgressEvent):
    """A message for the user; ``level`` is ``"info"`` or ``"warning"``."""

    text: str
    level: str = "info"


ProgressCallback = Callable[[ProgressEvent], None]


def emit(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``callback`` if there is one."""
    if callback is not None:
        callback(event)
