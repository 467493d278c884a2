"""The paper's ablation: its budgets, its configuration and each run's training config.

For each method (``mocov2``, ``local``, ``zca``, ``local+zca``) and seed, with the same data and
budget: pretrain; compute the global and dense spectra of the backbone (effective rank both ways,
α-ReQ), the inter-image cosine similarity of its embeddings, and the linear-probe Dice per organ on the
evaluation set. A ``random:ARCH`` baseline gets the same evaluation, and the pixels' own similarity is
measured once. Running is :mod:`collapsekit.experiments.run`, the typed results (``results.json``)
:mod:`collapsekit.experiments.results`, ``report.md`` and the figures
:mod:`collapsekit.experiments.report`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from collapsekit.data import LoadOptions
from collapsekit.errors import ConfigError
from collapsekit.options import look_up_option
from collapsekit.train.config import TrainConfig, config_from_dict

__all__ = [
    "BUDGETS",
    "BUDGET_KEYS",
    "Budget",
    "AblationConfig",
    "METHOD_FLAGS",
    "train_config",
]

#: Model settings an ablation may override for every method (e.g. to compare ZCA placements).
MODEL_KEYS = ("zca_placement", "zca_group_size", "local_layer", "local_negatives")

METHOD_FLAGS = {
    "random": (None, None),
    "mocov2": (False, False),
    "local": (True, False),
    "zca": (False, True),
    "local+zca": (True, True),
}


@dataclass(frozen=True)
class Budget:
    """The settings of one ablation budget; ``None`` means "not set" (absent from ``settings``).

    Training either follows a named train budget (``train_budget``, see
    :data:`collapsekit.train.config.TRAIN_BUDGETS`; then only explicit overrides of the training
    fields change it) or is built from the training fields here. ``phantom_cases`` sizes the
    evaluation phantom in both cases (and the pretraining phantom without a train budget).

    Args:
        arch: backbone, e.g. ``"resnet18"``.
        image_size: pretraining and extraction image size (px).
        phantom_cases: cases of the evaluation phantom.
        samples: slices embedded for the spectra and similarity.
        probe_epochs, probe_image_size, probe_output_stride: the linear probe.
        train_budget: a named train budget, or ``None``.
        epochs, steps, batch_size, queue_size, momentum: training settings (``None``: the
            train budget's or the training default).
        zca_placement, zca_group_size, local_layer, local_negatives: model settings
            (:data:`MODEL_KEYS`) applied to every method.
    """

    # The field order is the key order of ``settings`` in results.json.
    train_budget: str | None = None
    arch: str = "resnet18"
    image_size: int = 128
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    queue_size: int | None = None
    momentum: float | None = None
    phantom_cases: int = 12
    samples: int = 1024
    probe_epochs: int = 20
    probe_image_size: int = 128
    probe_output_stride: int = 8
    zca_placement: str | None = None
    zca_group_size: int | None = None
    local_layer: str | None = None
    local_negatives: str | None = None

    def with_overrides(self, overrides: dict[str, Any]) -> Budget:
        """This budget with ``overrides`` (budget keys) applied.

        Raises:
            ConfigError: a key that is not a budget setting.
        """
        unknown = set(overrides) - set(BUDGET_KEYS)
        if unknown:
            raise ConfigError(f"unknown budget keys {sorted(unknown)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The settings that are set, as the plain dict stored under ``settings`` in results.json."""
        return {k: v for k, v in asdict(self).items() if v is not None}


#: Every setting a budget has (and an override may change).
BUDGET_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Budget))

#: The budgets. ``demo`` pretrains with ``collapsekit train --budget demo`` (the regime where MoCo
#: v2 is healthy on the phantom and dimensional collapse shows; ~7–12 min per run on 2 CPU cores)
#: and evaluates at the same 64 px; ``small`` fits ≤ 25 min on 2 CPU cores on the phantom;
#: ``paper`` is the paper-scale setting (ResNet-50, long schedule) meant for a GPU.
BUDGETS: dict[str, Budget] = {
    "demo": Budget(
        train_budget="demo",
        arch="resnet18",
        image_size=64,
        phantom_cases=48,
        samples=1024,
        probe_epochs=20,
        probe_image_size=64,
        probe_output_stride=8,
    ),
    # issue 20's fair test on CPU (pre-registered in docs/results/fair-test.md): train budget
    # fair96, evaluated at 96 px like the demo
    "fair96": Budget(
        train_budget="fair96",
        arch="resnet18",
        image_size=96,
        phantom_cases=48,
        samples=1024,
        probe_epochs=20,
        probe_image_size=96,
        probe_output_stride=8,
        local_negatives="same_image",
        zca_placement="block",
    ),
    "fair128": Budget(
        train_budget="fair128",
        arch="resnet18",
        image_size=128,
        phantom_cases=48,
        samples=1024,
        probe_epochs=20,
        probe_image_size=128,
        probe_output_stride=8,
        local_negatives="same_image",
        zca_placement="block",
    ),
    "small": Budget(
        arch="resnet18",
        image_size=128,
        epochs=10,
        batch_size=32,
        queue_size=1024,
        momentum=0.99,
        phantom_cases=12,
        samples=1024,
        probe_epochs=20,
        probe_image_size=128,
        probe_output_stride=8,
    ),
    "paper": Budget(
        arch="resnet50",
        image_size=224,
        epochs=200,
        batch_size=256,
        queue_size=65536,
        momentum=0.999,
        phantom_cases=200,
        samples=4096,
        probe_epochs=80,
        probe_image_size=224,
        probe_output_stride=8,
    ),
}


@dataclass(frozen=True)
class AblationConfig:
    """What ``collapsekit ablate`` runs (see :data:`BUDGETS`)."""

    dataset: str = "phantom"
    data_dir: str | None = None
    eval_dataset: str = "phantom"
    eval_data_dir: str | None = None
    methods: tuple[str, ...] = ("mocov2", "local", "zca", "local+zca")
    budget: str = "demo"
    seeds: int = 1
    device: str = "auto"
    overrides: dict[str, Any] = field(
        default_factory=dict
    )  # budget keys to change (e.g. epochs=1 in tests)

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", look_up_option(self.budget, BUDGETS, "budget"))
        object.__setattr__(
            self,
            "dataset",
            look_up_option(self.dataset, ("phantom", "abdomenct1k", "folder", "btcv"), "dataset"),
        )
        object.__setattr__(
            self,
            "eval_dataset",
            look_up_option(self.eval_dataset, ("phantom", "btcv"), "eval dataset"),
        )
        methods = tuple(
            look_up_option(m, ("mocov2", "local", "zca", "local+zca"), "method")
            for m in self.methods
        )
        if not methods:
            raise ConfigError("--methods is empty")
        object.__setattr__(self, "methods", methods)
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {self.seeds}")
        BUDGETS[self.budget].with_overrides(self.overrides)  # unknown keys fail here
        if self.dataset != "phantom" and not self.data_dir:
            raise ConfigError(f"--data-dir is required for --dataset {self.dataset}")
        if self.eval_dataset != "phantom" and not self.eval_data_dir:
            raise ConfigError(f"--eval-data-dir is required for --eval-dataset {self.eval_dataset}")

    @property
    def settings(self) -> Budget:
        """The budget with the overrides applied."""
        return BUDGETS[self.budget].with_overrides(self.overrides)


def train_config(
    cfg: AblationConfig, method: str, seed: int, loading: LoadOptions = LoadOptions()
) -> TrainConfig:
    """The pretraining config of one run: a named train budget (``demo``) or the budget's keys;
    its volumes are loaded as ``loading`` says (cache directory, workers, O_DIRECT)."""
    budget = cfg.settings
    s = budget.to_dict()  # the settings that are set
    train_keys = ("image_size", "epochs", "steps", "batch_size", "phantom_cases")
    model = {"method": method, "arch": budget.arch}
    model.update({k: s[k] for k in ("queue_size", "momentum", *MODEL_KEYS) if k in s})
    # an epochs override replaces the train budget's step count
    data: dict[str, Any] = {}
    if "epochs" in cfg.overrides and "steps" not in cfg.overrides:
        data["steps"] = None
    if "phantom_cases" in cfg.overrides:  # the budget's held-out count may not fit: default it
        data["phantom_validation"] = None
    return config_from_dict(
        data,
        budget.train_budget,
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        seed=seed,
        device=cfg.device,
        final_samples=0,  # the ablation evaluates each run itself (run.evaluate)
        cache_dir=str(loading.cache_dir) if loading.cache_dir else None,
        preprocess_workers=loading.workers,
        cache_direct_io=loading.direct_io,
        # with a named train budget only explicit overrides change its training settings (the
        # budget's own phantom_cases sizes the evaluation phantom)
        **{
            k: getattr(budget, k)
            for k in train_keys
            if k in (cfg.overrides if budget.train_budget is not None else s)
        },
        model=model,
    )
