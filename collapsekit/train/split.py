"""Which volumes a run trains on and which it holds out for the live monitor.

The dataset's validation split is the monitor set; a dataset without one (AbdomenCT-1K, a folder)
holds out its last volumes: one in twenty, at least one, when there are five or more volumes, and
otherwise monitors on the training volumes themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from collapsekit.data import LoadOptions, PhantomConfig, PreprocessConfig, Volume, load_split
from collapsekit.progress import ProgressCallback
from collapsekit.train.config import TrainConfig
from collapsekit.train.distributed import DistContext

__all__ = ["load_training_volumes", "loading_options"]


def loading_options(cfg: TrainConfig, ctx: DistContext | None = None) -> LoadOptions:
    """How the run loads volumes: ``cfg``'s cache directory, preprocessing workers and O_DIRECT,
    by the process ``ctx`` names (ranks sharing a cache split the preprocessing)."""
    return LoadOptions(
        cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else None,
        workers=cfg.preprocess_workers,
        direct_io=cfg.cache_direct_io,
        rank=ctx.rank if ctx else 0,
        world_size=ctx.world_size if ctx else 1,
        local_world_size=ctx.local_world_size if ctx else 1,
    )


def load_training_volumes(
    cfg: TrainConfig, progress: ProgressCallback | None, ctx: DistContext | None = None
) -> tuple[list[Volume], list[Volume]]:
    """Training and monitor volumes; without a validation split the last volumes are held out.

    Loaded as :func:`loading_options` says."""
    pre = PreprocessConfig(a_min=cfg.a_min, a_max=cfg.a_max, in_plane_size=cfg.in_plane_size)
    phantom = PhantomConfig(
        cases=cfg.phantom_cases,
        size=cfg.phantom_size,
        slices=cfg.phantom_slices,
        seed=cfg.seed,
        validation=cfg.phantom_validation,
    )
    kw: dict[str, Any] = dict(phantom=phantom, options=loading_options(cfg, ctx), progress=progress)
    train_vols = load_split(cfg.dataset, cfg.data_dir, "training", pre, **kw)
    monitor_vols = load_split(cfg.dataset, cfg.data_dir, "validation", pre, **kw)
    if not monitor_vols:
        # No validation split (AbdomenCT-1K, folder): hold out the last volumes for monitoring.
        n_hold = max(1, len(train_vols) // 20) if len(train_vols) >= 5 else 0
        if n_hold:
            monitor_vols = train_vols[-n_hold:]
            train_vols = train_vols[:-n_hold]
        else:
            monitor_vols = train_vols
    return train_vols, monitor_vols
