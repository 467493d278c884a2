"""Run directories: the one naming rule and the one ``runs/latest`` resolver.

A run directory holds ``checkpoint.pt``, ``config.toml`` and ``metrics.jsonl``; under ``runs/`` the
symlink ``runs/latest`` points at the newest one (relative link, replaced atomically).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from collapsekit.errors import CheckpointError

__all__ = [
    "RUN_FILES",
    "RUNS_ROOT",
    "LATEST",
    "method_dirname",
    "run_dir_name",
    "default_run_dir",
    "update_latest",
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


def update_latest(run_dir: str | Path) -> None:
    """Point ``<parent>/latest`` at ``run_dir`` when its parent is a ``runs`` directory.

    The link is relative and replaced atomically; a filesystem without symlinks is not worth
    failing a run for, so errors are ignored.
    """
    run_dir = Path(run_dir).resolve()  # never point latest at itself when run via runs/latest
    if run_dir.parent.name != RUNS_ROOT.name:
        return
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, link)
    except OSError:
        pass


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
