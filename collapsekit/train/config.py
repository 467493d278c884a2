"""Training configuration: frozen dataclasses, read from / written to TOML, stored in checkpoints."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from collapsekit.data.augment import AUGMENT_PRESETS, augment_preset
from collapsekit.errors import ConfigError
from collapsekit.models import ModelConfig
from collapsekit.models.builder import (
    upgrade_model_keys,
    whitening_group_size,
    whitening_samples,
)
from collapsekit.options import look_up_option
from collapsekit.serialization import atomic_write

__all__ = [
    "TRAIN_BUDGETS",
    "TrainConfig",
    "budget_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]

DATASETS = ("phantom", "btcv", "abdomenct1k", "folder")
#: ``device_augment`` and ``compile`` choices (see :mod:`collapsekit.train.feed`).
DEVICE_AUGMENT = ("auto", "on", "off")
COMPILE_MODES = ("off", "on", "cudagraphs")


def _default_model() -> ModelConfig:
    # Small-data defaults: with a few hundred steps, m=0.999 leaves the key encoder at its random
    # init; m=0.99 and a 1024-key queue suit the phantom budget. Paper scale: see budgets in ablate.
    # zca_group_size 0: chosen from the batch and image size (TrainConfig.__post_init__).
    return ModelConfig(queue_size=1024, momentum=0.99, local_queue_size=4096, zca_group_size=0)


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
        lr: base learning rate: 0.03, MoCo v2's base rate, *not* scaled to the batch; ``None``
            means MoCo's linear scaling rule ``0.03 * batch_size / 256``. At batch 32 that rule
            gives 0.00375, and the default run did not learn in its 120 steps (loss_global 4.33
            above 0.9·ln(K+1) = 4.12); at 0.03 with a 10-step warm-up it ended healthy (measured:
            docs/results/performance.md, "The default budget").
        seed: seeds model init, data order and augmentations (runs are reproducible on CPU).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        cache_dir: directory of the disk cache of preprocessed volumes (``None``: in memory);
            with ``preprocess_workers`` and ``cache_direct_io`` the
            :class:`~collapsekit.data.LoadOptions` of the training data. None of the three
            changes a number; a resumed run keeps its ``cache_dir`` and takes the given
            ``preprocess_workers`` and ``cache_direct_io``.
        preprocess_workers: processes that preprocess volumes (``None``: every available core).
        cache_direct_io: write cache entries with ``O_DIRECT`` where the file system allows it
            (the CLI sets it from ``$COLLAPSEKIT_CACHE_DIRECT``).
        phantom_validation: phantom cases held out for the monitor (default: a third, 1 to 4).
        warmup_steps: linear learning-rate warm-up before the cosine schedule (0: none;
            default 10).
        augment: the two-view augmentation preset (:data:`collapsekit.data.augment.AUGMENT_PRESETS`):
            ``ct`` (default: crops 0.2–1, quarter-strength intensity jitter), ``mocov2`` (full
            jitter and blur) or ``demo`` (crops 0.8–1, no jitter or blur).
        crop_min_scale, jitter_p, jitter_strength, blur_p: override the preset's smallest crop
            area, jitter probability and strength, blur probability (``None``: the preset's).
        prefill_queue: fill the MoCo queues with real keys (no update) before the first step of a
            fresh run, instead of training the first ``K / B`` steps against random vectors.
        monitor_samples: held-out slices embedded for the live collapse monitor. Keep it at least
            twice the backbone width: ``N`` samples cap any rank at ``N − 1`` (reported as
            ``rank_bound``).
        log_every: write a metrics.jsonl row (loss parts, lr, top-1s, images/s: means over the
            steps since the last row) every this many steps; a run shorter than ``10 ·
            log_every`` steps logs every ``steps // 10`` so its curve still has 10 points.
        monitor_every: also monitor (and log a metrics.jsonl record) every this many steps
            (0: once per epoch).
        fit_queue: shrink the queue to ``K = N/4`` when it exceeds a quarter of the ``N``
            training slices (a message says so); ``false`` keeps ``model.queue_size``.
        final_samples: slices of the evaluation phantom embedded for the final spectrum, the
            set and normalisation ``collapsekit spectrum RUN`` uses by default (so both report
            the same headline rank); 0: the final spectrum is the last monitor pass.
        collapse_warn_fraction: warn when the effective rank falls below this fraction of the
            backbone width.
        checkpoint_every: also write ``checkpoint.pt`` every this many steps (0: only per epoch).
        keep_every_epochs: keep a periodic ``checkpoint_epochNNN.pt`` every this many epochs (0: never).
        stop_after: stop this session after this many total steps without changing the schedule
            (resume later with ``--resume``).
        channels_last: run both encoders in the ``torch.channels_last`` memory format (on CPU
            max-pooling and BatchNorm are several times faster in it). Speed only: the same losses
            and gradients to float rounding (``benchmarks/step_vs_reference.py``).
        fused_sgd: use PyTorch's fused SGD kernel (``SGD(fused=True)``) instead of its per-tensor
            loop. Speed only.
        fused_local_loss: compute the local InfoNCE with
            :func:`~collapsekit.models.local.local_info_nce_loss` (one autograd node over the
            ``(points, points + queue)`` logits, about half the time) instead of the plain
            autograd chain. Speed only.
        device_augment: make the two views on the training device from stored slices
            (:mod:`collapsekit.train.feed`): ``auto`` (on CUDA yes; on the CPU what measured
            faster), ``on`` or ``off`` (DataLoader workers augment each sample).
        compile: ``off``, ``on`` (``torch.compile`` the step's model) or ``cudagraphs``
            (``torch.compile(mode="reduce-overhead")``). Speed only; off until measured on a GPU.
            Like ``device`` and ``num_workers``, the value given to a resumed run wins.
        model: the model (method, backbone, MoCo and ZCA settings).
    """

    dataset: str = "phantom"
    data_dir: str | None = None
    image_size: int = 128
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 32
    lr: float | None = 0.03
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    num_workers: int = 2
    phantom_cases: int = 12
    phantom_size: int = 128
    phantom_slices: int = 48
    phantom_validation: int | None = None
    a_min: float = -175.0
    a_max: float = 250.0
    in_plane_size: int | None = None
    cache_dir: str | None = None
    preprocess_workers: int | None = None
    cache_direct_io: bool = True
    warmup_steps: int = 10
    augment: str = "ct"
    crop_min_scale: float | None = None
    jitter_p: float | None = None
    jitter_strength: float | None = None
    blur_p: float | None = None
    prefill_queue: bool = True
    monitor_samples: int = 1024
    log_every: int = 10
    monitor_every: int = 0
    fit_queue: bool = True
    final_samples: int = 2048
    collapse_warn_fraction: float = 0.02
    checkpoint_every: int = 0
    keep_every_epochs: int = 0
    stop_after: int | None = None
    amp: bool = True
    channels_last: bool = True
    fused_sgd: bool = True
    fused_local_loss: bool = True
    device_augment: str = "auto"
    compile: str = "off"
    model: ModelConfig = field(default_factory=_default_model)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", look_up_option(self.dataset, DATASETS, "dataset"))
        object.__setattr__(
            self, "device", look_up_option(self.device, ("auto", "cpu", "cuda"), "device")
        )
        for name, choices in (("device_augment", DEVICE_AUGMENT), ("compile", COMPILE_MODES)):
            object.__setattr__(self, name, look_up_option(getattr(self, name), choices, name))
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
        if self.warmup_steps < 0 or self.monitor_every < 0 or self.final_samples < 0:
            raise ConfigError("warmup_steps, monitor_every and final_samples must be >= 0")
        if self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1, got {self.log_every}")
        object.__setattr__(
            self, "augment", look_up_option(self.augment, AUGMENT_PRESETS, "augmentation preset")
        )
        if self.crop_min_scale is not None and not 0.0 < self.crop_min_scale <= 1.0:
            raise ConfigError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        for name in ("jitter_p", "blur_p"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.jitter_strength is not None and not 0.0 <= self.jitter_strength <= 2.5:
            raise ConfigError(f"jitter_strength must be in [0, 2.5], got {self.jitter_strength}")
        if self.model.uses_zca and self.model.zca_group_size == 0:
            m = self.whitening_samples
            d = whitening_group_size(self.model.backbone_width, m)
            object.__setattr__(self, "model", dataclasses.replace(self.model, zca_group_size=d))
        if not 0.0 <= self.collapse_warn_fraction <= 1.0:
            raise ConfigError("collapse_warn_fraction must be in [0, 1]")

    @property
    def whitening_samples(self) -> int:
        """Vectors per ZCA statistic ``m`` (per sub-batch; per rank with as many ranks as splits)."""
        return whitening_samples(
            self.model.zca_placement,
            self.batch_size,
            self.model.shuffle_bn_splits,
            self.image_size,
        )

    def augmentation(self) -> dict[str, Any]:
        """The :class:`~collapsekit.data.augment.TwoViewTransform` keyword arguments (``size`` too):
        the preset's parameters with the set overrides applied."""
        params = augment_preset(self.augment)
        if self.crop_min_scale is not None:
            params["scale"] = (self.crop_min_scale, 1.0)
        for name in ("jitter_p", "jitter_strength", "blur_p"):
            if getattr(self, name) is not None:
                params[name] = getattr(self, name)
        return {"size": self.image_size, **params}

    @property
    def base_lr(self) -> float:
        """``lr``, or MoCo's linear scaling rule ``0.03 * batch_size / 256`` when it is None."""
        return self.lr if self.lr is not None else 0.03 * self.batch_size / 256


#: Named training budgets: settings that override the defaults (``collapsekit train --budget``).
#: ``demo`` is the CPU regime in which MoCo v2 is *healthy* on the phantom (the contrastive task is
#: solved: loss well below ln(K + 1), positive ranked first far above chance, projector outputs
#: not a point) so that dimensional collapse can be seen — measured in docs/archive/collapse/. With MoCo
#: v2's default augmentation (crop 0.2–1, intensity jitter, blur) two views of one phantom slice
#: are no closer than two different slices (partner-view retrieval at chance, even in pixels), the
#: task is unsolvable and the run collapses completely to a point: a failed run, not the
#: phenomenon. 64 px views, crops of 0.8–1 of the slice without intensity jitter or blur, a
#: phantom of 48 training cases (≈2,300 slices; 22 more held out so that 1,024 monitor slices do
#: not cap the rank of 512-d embeddings) with K = 256 ≤ N/4, m = 0.99, lr 0.03 with a 50-step warm-up.
TRAIN_BUDGETS: dict[str, dict[str, Any]] = {
    "default": {},
    "demo": {
        "image_size": 64,
        "steps": 1200,
        "batch_size": 32,
        "lr": 0.03,
        "warmup_steps": 50,
        "augment": "demo",
        "phantom_cases": 70,
        "phantom_validation": 22,  # 48 training cases (~2,300 slices), ~1,050 monitor slices
        "monitor_every": 200,
        # the local variant the demo table was measured with (issue 10)
        "model": {
            "queue_size": 256,
            "momentum": 0.99,
            "zca_group_size": 16,
            "local_negatives": "other_images",
        },
    },
    # The fair test of issue 20 on CPU (docs/results/fair-test.md, pre-registered): 96 px views where
    # layer3 is 6×6, the ``ct`` preset (crops 0.2–1, quarter-strength jitter), the demo's data,
    # queue and schedule shape at 600 steps; checkpoints every 50 steps so runs resume.
    "fair96": {
        "image_size": 96,
        "steps": 600,
        "batch_size": 32,
        "lr": 0.03,
        "warmup_steps": 50,
        "augment": "ct",
        "phantom_cases": 70,
        "phantom_validation": 22,
        "monitor_every": 200,
        "checkpoint_every": 50,
        "model": {"queue_size": 256, "momentum": 0.99, "zca_group_size": 0},
    },
    # The same test on one GPU (docs/archive/fair_test/gpu_full.sh, not yet run): 128 px (layer3
    # 8×8), batch 256 (pre_projector whitens 128 vectors per split: d = 32), K = 512 ≤ N/4.
    "fair128": {
        "image_size": 128,
        "steps": 300,
        "batch_size": 256,
        "warmup_steps": 20,
        "augment": "ct",
        "phantom_cases": 70,
        "phantom_validation": 22,
        "monitor_every": 100,
        "checkpoint_every": 50,
        "num_workers": 12,
        "model": {"queue_size": 512, "momentum": 0.99, "zca_group_size": 0},
    },
}


def budget_overrides(name: str) -> dict[str, Any]:
    """The settings of the named budget (a copy), for :func:`config_from_dict` overrides."""
    name = look_up_option(name, TRAIN_BUDGETS, "budget")
    b = dict(TRAIN_BUDGETS[name])
    if "model" in b:
        b["model"] = dict(b["model"])
    return b


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


_EXPECTED = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "str": ((str,), "a string"),
}


def _check_types(data: dict[str, Any], cls: type, where: str) -> None:
    """Each value's type against the dataclass field's annotation (``int``, ``float | None`` ...)."""
    annotations = {f.name: str(f.type) for f in fields(cls)}
    for key, value in data.items():
        ann = annotations.get(key, "")
        parts = [p.strip() for p in ann.split("|")]
        if value is None and "None" in parts:
            continue
        expected = _EXPECTED.get(parts[0])
        if expected is None:
            continue
        types, words = expected
        ok = isinstance(value, types) and not (parts[0] != "bool" and isinstance(value, bool))
        if not ok:
            raise ConfigError(
                f"{where}key '{key}' = {value!r}: expected {words}, got {type(value).__name__}"
            )


def config_from_dict(
    data: dict[str, Any], budget: str | None = None, *, source: str | None = None, **overrides: Any
) -> TrainConfig:
    """Build a :class:`TrainConfig` from plain data; ``overrides`` (not ``None``) win.

    Precedence, lowest first: the defaults, the named ``budget`` (:data:`TRAIN_BUDGETS`), ``data``
    (e.g. a TOML file), ``overrides`` (e.g. command-line flags). ``overrides`` may contain
    ``model`` as a dict of model fields to override.

    Raises:
        ConfigError: an unknown key (with a "did you mean"), a value of the wrong type (naming the
            table, the key, the value and the type expected), an out-of-range value; prefixed with
            ``source`` (e.g. the config file) when given.
    """
    try:
        return _config_from_dict(data, budget, overrides)
    except ConfigError as e:
        if source is None:
            raise
        raise ConfigError(f"{source}: {e}") from None


def _config_from_dict(
    data: dict[str, Any], budget: str | None, overrides: dict[str, Any]
) -> TrainConfig:
    base = budget_overrides(budget) if budget else {}
    base_model = base.pop("model", {})
    if "augment" not in data and "jitter_p" in data:
        # a config of collapsekit <= 0.2 (no presets): its jitter was MoCo v2's full strength
        data = {**data, "augment": "mocov2"}
    data = {**base, **data}
    model_table = data.pop("model", {}) or {}
    if not isinstance(model_table, dict):
        raise ConfigError(f"'model' must be a table ([model]), got {type(model_table).__name__}")
    model_data = upgrade_model_keys({**base_model, **model_table})
    _check_keys(data, TrainConfig, "config")
    _check_keys(model_data, ModelConfig, "[model]")
    _check_types(data, TrainConfig, "")
    _check_types(model_data, ModelConfig, "[model] ")
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


def load_config(path: str | Path, budget: str | None = None, **overrides: Any) -> TrainConfig:
    """Read a TOML config file (top-level training keys, a ``[model]`` table); flags override it,
    and it overrides the named ``budget``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot parse config {path}: {e}") from None
    except RecursionError:
        raise ConfigError(
            f"cannot parse config {path}: its tables or arrays are nested too deeply "
            "(a training config has two levels)"
        ) from None
    return config_from_dict(data, budget, source=str(path), **overrides)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as TOML (``None`` values omitted: they are the defaults)."""
    data = _drop_none(config_to_dict(cfg))
    with atomic_write(path) as f:  # a full disk never leaves a torn config.toml
        f.write(tomli_w.dumps(data))
