"""Which volumes a run trains on and which it holds out for the live monitor.

The dataset's validation split is the monitor set; a dataset without one (AbdomenCT-1K, a folder)
holds out its last volumes: one in twenty, at least one, when there are five or more volumes, and
otherwise monitors on the training volumes themselves.
"""

from __future__ import annotations

from typing import Any

from collapsekit.data import PhantomConfig, PreprocessConfig, Volume, load_split
from collapsekit.progress import ProgressCallback
from collapsekit.train.config import TrainConfig

__all__ = ["load_volumes"]


def load_volumes(
    cfg: TrainConfig, progress: ProgressCallback | None
) -> tuple[list[Volume], list[Volume]]:
    """Training and monitor volumes; without a validation split the last volumes are held out."""
    pre = PreprocessConfig(a_min=cfg.a_min, a_max=cfg.a_max, in_plane_size=cfg.in_plane_size)
    phantom = PhantomConfig(
        cases=cfg.phantom_cases,
        size=cfg.phantom_size,
        slices=cfg.phantom_slices,
        seed=cfg.seed,
        validation=cfg.phantom_validation,
    )
    kw: dict[str, Any] = dict(phantom=phantom, cache_dir=cfg.cache_dir, progress=progress)
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
