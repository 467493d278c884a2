"""Pretraining: configuration, the training loop, checkpoints, torchrun set-up."""

from __future__ import annotations

from collapsekit.train.checkpoint import load_checkpoint, save_checkpoint
from collapsekit.train.config import TrainConfig, config_from_dict, load_config, save_config
from collapsekit.train.loop import TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "config_from_dict",
    "load_config",
    "save_config",
    "train",
    "load_checkpoint",
    "save_checkpoint",
]
