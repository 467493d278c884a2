"""Errors a user can act on. The CLI prints their message in one red line and exits 2.

Each also derives from the built-in exception a Python user would catch for the same mistake, so
``except ValueError`` sees a bad option, bad data, bad embeddings or a bad checkpoint, and
``except OSError`` an output that cannot be written: ``InputError``, ``ConfigError``,
``DataError`` (and ``LayoutError``) and ``CheckpointError`` subclass ``ValueError``, ``OutputError``
is an ``OSError`` (with ``errno`` None: the message says what happened).
"""

from __future__ import annotations

__all__ = [
    "CollapsekitError",
    "DataError",
    "LayoutError",
    "CheckpointError",
    "InputError",
    "ConfigError",
    "TrainingError",
    "OutputError",
    "TrainingInterrupted",
    "Terminated",
]


class CollapsekitError(Exception):
    """Base class of every error caused by user input (bad file, bad option, bad data)."""


class DataError(CollapsekitError, ValueError):
    """A volume, label map or dataset that cannot be used (missing, corrupt, wrong shape)."""


class LayoutError(DataError):
    """A data directory whose structure does not match the expected dataset layout."""


class CheckpointError(CollapsekitError, ValueError):
    """A checkpoint that cannot be loaded safely or is not recognised."""


class InputError(CollapsekitError, ValueError):
    """Bad embeddings or arrays given to a diagnostic (shape, dtype, NaN, too few rows)."""


class ConfigError(CollapsekitError, ValueError):
    """An invalid option or configuration value."""


class TrainingError(CollapsekitError):
    """Training stopped for a reason the user should know (NaN loss, batch larger than data)."""


class OutputError(CollapsekitError, OSError):
    """An output that cannot be written (read-only, a file in the way, full disk) or that would
    replace a file the command did not write."""


class TrainingInterrupted(TrainingError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint; ``exit_code`` is 128 + the
    signal number (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process killed by it."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where a command or a run installed a handler for it, as
    Ctrl-C raises KeyboardInterrupt (so nothing catching ``Exception`` swallows it). Python's
    default SIGTERM action ends the process without a word; SLURM preempts with SIGTERM."""

    signum = 15  # signal.SIGTERM on every platform Python supports
