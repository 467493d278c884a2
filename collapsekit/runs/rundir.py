"""Run directories: the one naming rule and the one ``runs/latest`` resolver.

A run directory holds ``checkpoint.pt``, ``config.toml`` and ``metrics.jsonl``; under ``runs/`` the
symlink ``runs/latest`` points at the newest one (relative link, replaced atomically; a file or a
link collapsekit did not make is never replaced). A training process holds its run directory
exclusively (:func:`hold_run_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from collapsekit.errors import CheckpointError, OutputError

__all__ = [
    "RUN_FILES",
    "RUNS_ROOT",
    "LATEST",
    "method_dirname",
    "run_dir_name",
    "default_run_dir",
    "update_latest",
    "hold_run_dir",
    "check_not_held",
    "resolve_latest",
    "holds_run",
    "diagnostics_dir",
]

RUN_FILES = ("checkpoint.pt", "config.toml", "metrics.jsonl")
RUNS_ROOT = Path("runs")
#: Where ``spectrum``/``similarity`` write without ``--out``: inside the run, or in the cwd.
DIAGNOSTICS = "diagnostics"
LATEST = "latest"


def method_dirname(method: str) -> str:
    """A method name as a directory name (``local+zca`` -> ``local_zca``)."""
    return method.replace("+", "_")


def run_dir_name(method: str, arch: str, when: datetime | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>-<method>-<arch>`` (``+`` in the method becomes ``_``)."""
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{method_dirname(method)}-{arch}"


def default_run_dir(method: str, arch: str, root: str | Path = RUNS_ROOT) -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<method>-<arch>``."""
    return Path(root) / run_dir_name(method, arch)


def holds_run(run_dir: str | Path) -> list[str]:
    """The run files already present in ``run_dir`` (empty when it holds no run)."""
    return [f for f in RUN_FILES if (Path(run_dir) / f).exists()]


def update_latest(run_dir: str | Path) -> str | None:
    """Point ``<parent>/latest`` at ``run_dir`` when its parent is a ``runs`` directory.

    Only a symlink collapsekit made is replaced (atomically): a relative link to a sibling
    directory name. A regular file, a directory or a link the user made (to a path) is left as
    it is, and the returned line says so. A filesystem without symlinks is not worth failing a
    run for, so write errors are ignored.

    Returns:
        ``None``, or one line saying why ``latest`` was left as it is.
    """
    run_dir = Path(run_dir).resolve()  # never point latest at itself when run via runs/latest
    if run_dir.parent.name != RUNS_ROOT.name:
        return None
    link = run_dir.parent / LATEST
    if link.is_symlink():
        target = os.readlink(link)
        if Path(target).name != target:  # "/elsewhere" or "../x": not one of ours
            return (
                f"{link} is a symlink to {target}, not one collapsekit made; left as it is "
                f"(it does not point at {run_dir.name})"
            )
    elif link.exists() or os.path.lexists(link):
        what = "a directory" if link.is_dir() else "a file"
        return (
            f"{link} is {what}, not the symlink collapsekit keeps there; left as it is "
            f"(it does not point at {run_dir.name})"
        )
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, link)
    except OSError:
        pass
    return None


@contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Create ``run_dir`` if needed and hold it exclusively: one training process per run.

    The lock is ``flock(LOCK_EX | LOCK_NB)`` on the directory itself (no lock file is written):
    the kernel releases it when the holder exits, crashed or killed included, so a stale lock
    cannot outlive its process. A second process is refused at once, naming the holder's PID and
    command line where the OS shows them (Linux: ``/proc/locks``). Where ``flock`` does not exist
    (Windows) or the filesystem refuses it (some network filesystems), the run is not locked.

    Raises:
        OutputError: another process holds ``run_dir``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield run_dir
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{run_dir} is in use by another training process ({_holder(fd)}); wait for it "
                "to finish or stop it, or choose another --out"
            ) from None
        except OSError:  # ENOLCK, EINVAL: a filesystem without locks
            pass
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def check_not_held(run_dir: str | Path) -> None:
    """Refuse ``run_dir`` at once when another process holds it (:func:`hold_run_dir`).

    Training takes the lock only once its data are loaded (minutes for a real dataset); this
    check, before the loading, refuses a second process before that wait. Nothing is created or
    written; a ``run_dir`` that does not exist is not held.

    Raises:
        OutputError: another process holds ``run_dir``.
    """
    if Path(run_dir).is_dir():
        with hold_run_dir(run_dir):
            pass


def _holder(fd: int) -> str:
    """``PID n: command`` of the process holding a flock on ``fd``'s inode, from /proc/locks."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return "PID unknown"
    for line in lines:
        parts = line.split()
        if "FLOCK" in parts and inode in parts and "->" not in parts:
            pid = parts[parts.index(inode) - 1]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmd = ""
            return f"PID {pid}" + (f": {cmd[:200]}" if cmd else "")
    return "PID unknown"


def resolve_latest(root: str | Path = RUNS_ROOT) -> Path:
    """The run directory ``<root>/latest`` points at, resolved (so results carry the run's name).

    Raises:
        CheckpointError: there is no ``<root>/latest/checkpoint.pt``.
    """
    latest = Path(root) / LATEST
    if not (latest / RUN_FILES[0]).is_file():
        raise CheckpointError(
            f"no run given and {latest}/{RUN_FILES[0]} does not exist: run `collapsekit train` "
            "first, or pass a checkpoint, a run directory or random:resnet18"
        )
    return latest.resolve()


def diagnostics_dir(inputs: Sequence[str]) -> Path:
    """The default ``--out`` of ``spectrum`` and ``similarity`` for ``inputs``.

    ``RUN/diagnostics`` when the one input is a run (its directory, its ``checkpoint.pt`` or
    ``runs/latest``, resolved), so results sit next to the run they describe and never on top of
    the ``spectrum.png`` training wrote; else ``./diagnostics`` (several inputs, embeddings files,
    ``random:ARCH``).
    """
    if len(inputs) == 1 and ":" not in inputs[0]:
        p = Path(inputs[0])
        run = p if p.is_dir() else p.parent if p.name == RUN_FILES[0] else None
        if run is not None and (run / RUN_FILES[0]).is_file():
            return run.resolve() / DIAGNOSTICS
    return Path(DIAGNOSTICS)
