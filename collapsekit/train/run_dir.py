"""The run directory of a training session: which directory, which config, and what to resume.

A fresh run refuses a ``--out`` that is a file, already holds a run (unless ``overwrite``) or holds
the user's own files; ``resume`` reads ``checkpoint.pt`` and takes the stored config, with the
settings given explicitly checked against it (:func:`~collapsekit.train.resume.plan_resume`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collapsekit.errors import ConfigError, OutputError
from collapsekit.outputs import check_writable_dir
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.runs.rundir import check_not_held, default_run_dir, holds_run
from collapsekit.train.config import TrainConfig
from collapsekit.train.distributed import DistContext, broadcast_object
from collapsekit.train.resume import ResumePlan, explicit_fields, plan_resume

__all__ = ["open_run", "check_new_run_dir"]


def open_run(
    cfg: TrainConfig,
    out: str | Path | None,
    *,
    resume: bool,
    overwrite: bool,
    ctx: DistContext,
    given: Mapping[str, Any] | None = None,
) -> tuple[TrainConfig, Path, dict[str, Any] | None, ResumePlan | None]:
    """The run directory, the effective config and, when resuming, the checkpoint to resume from
    and the resume plan (``given``: the settings given explicitly; default the fields of ``cfg``
    that differ from ``TrainConfig()``)."""
    run_dir = Path(out) if out is not None else default_run_dir(cfg.model.method, cfg.model.arch)
    run_dir = Path(broadcast_object(str(run_dir), ctx))
    if ctx.is_main:
        check_not_held(run_dir)  # another process trains here: refuse before the data load
    ckpt: dict[str, Any] | None = None
    plan: ResumePlan | None = None
    if resume:
        ckpt_path = run_dir / "checkpoint.pt"
        if not ckpt_path.is_file():
            raise ConfigError(f"nothing to resume: {ckpt_path} does not exist")
        ckpt = load_checkpoint(ckpt_path)
        plan = plan_resume(
            ckpt["config"],
            int(ckpt["step"]),
            int(ckpt.get("total_steps") or ckpt["step"]),
            explicit_fields(cfg) if given is None else given,
        )
        cfg = plan.config
    else:
        check_new_run_dir(run_dir, overwrite=overwrite)
    if ctx.is_main:
        check_writable_dir(run_dir, "run directory")
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes"
        )
    return cfg, run_dir, ckpt, plan


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
