"""Where a command writes: checked before it computes, so an hour of work is never lost to a typo.

Every command that writes files calls :func:`check_writable_dir` on its output directory first (a
read-only mount, a path that is a regular file, a missing permission are one line and exit 2 before
anything is computed) and :func:`refuse_overwrite` on the files it would replace.
:func:`write_failure` turns a write that still fails later (a full disk) into the message that says
what was kept.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from collapsekit.errors import CollapsekitError, OutputError

__all__ = [
    "check_writable_dir",
    "refuse_overwrite",
    "os_error_in",
    "write_failure",
    "writing",
]


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: str | Path, what: str = "output directory") -> None:
    """Raise :class:`OutputError` unless files can be created in ``path`` (or where it would be made).

    A path that starts with an unexpanded ``~`` (quoted on the command line) is refused rather than
    created as a directory named ``~``.

    Nothing is created: a directory that does not exist yet is checked through its nearest existing
    ancestor. The check writes and removes a temporary file, so read-only mounts and ACLs are seen
    (``os.access`` would miss them, and lies for root).
    """
    path = Path(path)
    if path.parts and path.parts[0].startswith("~"):
        # a quoted '~/x' reaches us unexpanded: writing would create a directory named '~' here
        raise OutputError(
            f"{what} {path} starts with '~', which the shell did not expand (it was quoted): "
            f"give the full path, e.g. {path.expanduser()}"
        )
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise OutputError(f"cannot create {what} {path}: {base} is a file, not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".collapsekit-write-check.", dir=base)
    except OSError as e:
        where = f"{path}" if base == path else f"{path} (in {base})"
        raise OutputError(f"cannot write to {what} {where}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(tmp)


def refuse_overwrite(paths: Iterable[str | Path], *, overwrite: bool) -> None:
    """Raise :class:`OutputError` when any of ``paths`` exists and ``overwrite`` is false."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise OutputError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --overwrite to replace, or choose another --out"
        )


def os_error_in(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc`` (itself, its cause or context), e.g. ENOSPC under torch's
    ``RuntimeError: [enforce fail at inline_container.cc]``; None when there is none."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, CollapsekitError):  # an OutputError is an OSError, but already says it all
            return None
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    if isinstance(exc, RuntimeError) and "file write failed" in str(exc):
        return OSError(errno.EIO, "file write failed")
    return None


def write_failure(path: str | Path, exc: OSError, kept: str) -> str:
    """One line for a write that failed: ``cannot write X: No space left on device; <kept>``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"cannot write {path}: {reason}; {kept}"


@contextmanager
def writing(path: str | Path, kept: str) -> Iterator[None]:
    """Turn an ``OSError`` (or torch's ``RuntimeError`` over one) raised while writing ``path`` into
    an :class:`OutputError` whose one line says what was kept."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        err = os_error_in(e)
        if err is None:
            raise
        raise OutputError(write_failure(path, err, kept)) from None
