"""Training configuration: frozen dataclasses, read from / written to TOML, stored in checkpoints."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from collapsekit.errors import ConfigError
from collapsekit.models import ModelConfig
from collapsekit.options import look_up_option

__all__ = ["TrainConfig", "config_from_dict", "config_to_dict", "load_config", "save_config"]

DATASETS = ("phantom", "btcv", "abdomenct1k", "folder")


def _default_model() -> ModelConfig:
    # Small-data defaults: with a few hundred steps, m=0.999 leaves the key encoder at its random
    # init; m=0.99 and a 1024-key queue suit the phantom budget. Paper scale: see budgets in ablate.
    return ModelConfig(queue_size=1024, momentum=0.99, local_queue_size=4096)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a pretraining run depends on.

    Args:
        dataset: ``phantom`` (built in), ``abdomenct1k``, ``btcv`` or ``folder``.
        data_dir: root of the dataset on disk (not used by ``phantom``).
        image_size: side of the square training views (pixels).
        epochs: passes over the training slices; ignored when ``steps`` is set.
        steps: total optimiser steps (sets the cosine schedule length).
        batch_size: global batch (split across ranks under torchrun).
        lr: base learning rate; ``None`` means MoCo's ``0.03 * batch_size / 256``.
        seed: seeds model init, data order and augmentations (runs are reproducible on CPU).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        monitor_samples: held-out slices embedded every epoch for the live effective rank.
        collapse_warn_fraction: warn when the effective rank falls below this fraction of the
            backbone width.
        checkpoint_every: also write ``checkpoint.pt`` every this many steps (0: only per epoch).
        keep_every_epochs: keep a periodic ``checkpoint_epochNNN.pt`` every this many epochs (0: never).
        stop_after: stop this session after this many total steps without changing the schedule
            (resume later with ``--resume``).
        model: the model (method, backbone, MoCo and ZCA settings).
    """

    dataset: str = "phantom"
    data_dir: str | None = None
    image_size: int = 128
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 32
    lr: float | None = None
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2
    phantom_cases: int = 12
    phantom_size: int = 128
    phantom_slices: int = 48
    a_min: float = -175.0
    a_max: float = 250.0
    in_plane_size: int | None = None
    cache_dir: str | None = None
    monitor_samples: int = 256
    collapse_warn_fraction: float = 0.02
    checkpoint_every: int = 0
    keep_every_epochs: int = 0
    stop_after: int | None = None
    amp: bool = True
    model: ModelConfig = field(default_factory=_default_model)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", look_up_option(self.dataset, DATASETS, "dataset"))
        object.__setattr__(
            self, "device", look_up_option(self.device, ("auto", "cpu", "cuda"), "device")
        )
        for name in ("image_size", "epochs", "batch_size", "monitor_samples", "phantom_cases"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2 (contrastive learning needs negatives)")
        if self.image_size < 32:
            raise ConfigError(
                f"image_size must be >= 32 (ResNet output stride is 32), got {self.image_size}"
            )
        if self.dataset != "phantom" and not self.data_dir:
            raise ConfigError(f"--data-dir is required for dataset '{self.dataset}'")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.collapse_warn_fraction <= 1.0:
            raise ConfigError("collapse_warn_fraction must be in [0, 1]")

    @property
    def base_lr(self) -> float:
        """MoCo's linear scaling rule: ``0.03 * batch_size / 256`` unless ``lr`` is set."""
        return self.lr if self.lr is not None else 0.03 * self.batch_size / 256


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain nested dict (``None`` values kept) for checkpoints and JSON."""
    return dataclasses.asdict(cfg)


def _check_keys(data: dict[str, Any], cls: type, where: str) -> None:
    names = [f.name for f in fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown {where} key '{key}'{hint}")


def config_from_dict(data: dict[str, Any], **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from plain data; ``overrides`` (not ``None``) win.

    ``overrides`` may contain ``model`` as a dict of model fields to override.
    """
    data = dict(data)
    model_data = dict(data.pop("model", {}) or {})
    _check_keys(data, TrainConfig, "config")
    _check_keys(model_data, ModelConfig, "[model]")
    model_over = overrides.pop("model", None) or {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    model_data.update({k: v for k, v in model_over.items() if v is not None})
    base_model = dataclasses.asdict(_default_model())
    base_model.update(model_data)
    try:
        model = ModelConfig(**base_model)
        return TrainConfig(**data, model=model)
    except TypeError as e:
        raise ConfigError(f"invalid configuration: {e}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a TOML config file (top-level training keys, a ``[model]`` table); flags override it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse config {path}: {e}") from None
    return config_from_dict(data, **overrides)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as TOML (``None`` values omitted: they are the defaults)."""
    data = _drop_none(config_to_dict(cfg))
    Path(path).write_text(tomli_w.dumps(data))
