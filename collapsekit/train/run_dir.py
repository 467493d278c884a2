"""The run directory of a training session: which directory, which config, and what to resume.

A fresh run refuses a ``--out`` that is a file, already holds a run (unless ``overwrite``) or holds
the user's own files; ``resume`` reads ``checkpoint.pt`` and takes the stored config, with the
runtime fields of the given one (:data:`RUNTIME_FIELDS`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from collapsekit.errors import ConfigError, OutputError
from collapsekit.outputs import check_writable_dir
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.runs.rundir import default_run_dir, holds_run
from collapsekit.train.config import TrainConfig, config_from_dict
from collapsekit.train.distributed import DistContext, broadcast_object

__all__ = ["RUNTIME_FIELDS", "open_run", "check_new_run_dir"]

# Fields of the given config that win over the stored one when resuming.
RUNTIME_FIELDS = ("stop_after", "num_workers", "device", "checkpoint_every")


def open_run(
    cfg: TrainConfig, out: str | Path | None, *, resume: bool, overwrite: bool, ctx: DistContext
) -> tuple[TrainConfig, Path, dict[str, Any] | None]:
    """The run directory, the effective config and, when resuming, the checkpoint to resume from."""
    run_dir = Path(out) if out is not None else default_run_dir(cfg.model.method, cfg.model.arch)
    run_dir = Path(broadcast_object(str(run_dir), ctx))
    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt_path = run_dir / "checkpoint.pt"
        if not ckpt_path.is_file():
            raise ConfigError(f"nothing to resume: {ckpt_path} does not exist")
        ckpt = load_checkpoint(ckpt_path)
        runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS}
        cfg = dataclasses.replace(config_from_dict(ckpt["config"]), **runtime)
    else:
        check_new_run_dir(run_dir, overwrite=overwrite)
    if ctx.is_main:
        check_writable_dir(run_dir, "run directory")
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes"
        )
    return cfg, run_dir, ckpt


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse a ``--out`` that is a file, holds a run, or holds the user's own files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--out {run_dir} is a file, not a run directory")
    existing = holds_run(run_dir)
    if existing and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(existing)}); use --resume to continue it, "
            "--overwrite to replace it, or another --out"
        )
    if run_dir.is_dir() and not existing and not overwrite:
        others = sorted(p.name for p in run_dir.iterdir())
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise OutputError(
                f"{run_dir} is not empty and holds no run ({shown}); pass --overwrite to train "
                "into it anyway, or choose another --out"
            )
