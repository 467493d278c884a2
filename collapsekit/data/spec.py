"""What data a run uses: the phantom dataset's definition and the evaluation phantom, owned here once.

:class:`PhantomConfig` says which phantom dataset (cases, size, slices, seed, validation split);
:func:`phantom_case_seed` says how its cases are seeded. Both are plain definitions with no
generator behind them, so :mod:`collapsekit.data.layouts` (which lists the phantom's cases) and
:mod:`collapsekit.data.phantom` (which draws and writes them) import them from here without
importing each other.

:func:`eval_phantom` is the phantom every evaluation uses (``spectrum``, ``similarity``, ``probe``,
``finetune``, the ablation): seed :data:`EVAL_PHANTOM_SEED`, so its cases are never among the cases
a run pretrains on.
"""

from __future__ import annotations

from dataclasses import dataclass

from collapsekit.errors import ConfigError

__all__ = [
    "EVAL_PHANTOM_SEED",
    "DIAGNOSTICS_CASES",
    "DIAGNOSTICS_SAMPLES",
    "PhantomConfig",
    "eval_phantom",
    "phantom_case_seed",
]


@dataclass(frozen=True)
class PhantomConfig:
    """The built-in phantom dataset: ``cases`` volumes, the last ``validation`` form the validation split.

    Args:
        cases: number of volumes (>= 1).
        size: in-plane size in pixels (>= 8); the field of view stays 400 mm.
        slices: number of axial slices (>= 1); the volume always spans 150 mm.
        seed: dataset seed; case ``i`` uses :func:`phantom_case_seed` ``(seed, i)``.
        validation: number of validation cases, ``0 <= validation < cases``; ``None`` (default)
            means :func:`default_validation_cases` — a third of the cases, at least 1, at most 4.
    """

    cases: int = 12
    size: int = 128
    slices: int = 48
    seed: int = 0
    validation: int | None = None

    def __post_init__(self) -> None:
        if self.validation is None:
            object.__setattr__(self, "validation", default_validation_cases(self.cases))
        if self.cases < 1:
            raise ConfigError(f"phantom cases must be >= 1, got {self.cases}")
        if self.size < 8:
            raise ConfigError(f"phantom size must be >= 8 pixels, got {self.size}")
        if self.slices < 1:
            raise ConfigError(f"phantom slices must be >= 1, got {self.slices}")
        if not 0 <= self.validation_cases < self.cases:
            raise ConfigError(
                f"phantom validation cases must be in [0, cases) = [0, {self.cases}), got {self.validation}"
            )
        if self.seed < 0:
            raise ConfigError(f"phantom seed must be >= 0, got {self.seed}")

    @property
    def validation_cases(self) -> int:
        """The number of validation cases (``validation`` once its default is resolved)."""
        return (
            self.validation if self.validation is not None else default_validation_cases(self.cases)
        )

    @property
    def training_cases(self) -> int:
        """``cases - validation_cases``: the first cases, which form the training split."""
        return self.cases - self.validation_cases


def default_validation_cases(cases: int) -> int:
    """Validation cases of a ``cases``-volume phantom: a third, at least 1 (when ``cases > 1``), at most 4."""
    return max(1, min(4, cases // 3)) if cases > 1 else 0


def phantom_case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` (0-based) of the phantom dataset with seed ``seed``: ``seed * 100_000 + index``."""
    return int(seed) * 100_000 + int(index)


#: Dataset seed of the evaluation phantom. Its case seeds are ``10_000 * 100_000 + i`` = 10^9 + i,
#: disjoint from the case seeds ``s * 100_000 + i`` of every pretraining phantom with seed
#: ``s < 10_000`` (and fewer than 100,000 cases), so evaluation cases are unseen in pretraining.
EVAL_PHANTOM_SEED = 10_000

#: Cases of the evaluation phantom that ``collapsekit spectrum`` / ``similarity`` embed by default
#: (all in one split), and the slices taken evenly from them: the set of a run's headline rank,
#: which ``train``'s final spectrum measures too.
DIAGNOSTICS_CASES = 48
DIAGNOSTICS_SAMPLES = 2048


def eval_phantom(
    cases: int = 12, size: int = 128, slices: int = 48, validation: int | None = None
) -> PhantomConfig:
    """The evaluation phantom: :class:`PhantomConfig` with seed :data:`EVAL_PHANTOM_SEED`.

    Args:
        cases, size, slices: as in :class:`PhantomConfig`.
        validation: validation cases; ``None`` (default) is :func:`default_validation_cases` (what
            the probe and fine-tuning hold out); ``0`` puts every case in the training split.

    Raises:
        ConfigError: invalid sizes or validation count (see :class:`PhantomConfig`).
    """
    return PhantomConfig(
        cases=cases, size=size, slices=slices, seed=EVAL_PHANTOM_SEED, validation=validation
    )
