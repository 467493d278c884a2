"""Pretraining: configuration, the training loop, live monitoring, sampling, torchrun set-up."""

from __future__ import annotations

from collapsekit.train.config import TrainConfig, config_from_dict, load_config, save_config
from collapsekit.train.loop import TrainResult, train
from collapsekit.train.records import MetricsRecord, StepResult, read_metrics

__all__ = [
    "TrainConfig",
    "TrainResult",
    "MetricsRecord",
    "StepResult",
    "read_metrics",
    "config_from_dict",
    "load_config",
    "save_config",
    "train",
]
