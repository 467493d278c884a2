"""Pretraining: configuration, the training loop, live monitoring, sampling, torchrun set-up."""

from __future__ import annotations

from collapsekit.train.config import TrainConfig, config_from_dict, load_config, save_config
from collapsekit.train.loop import TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "config_from_dict",
    "load_config",
    "save_config",
    "train",
]
