"""Typed results of the ablation: one run's evaluation, its summary, a method's aggregate, the whole.

Each is a frozen dataclass with ``to_dict``/``from_dict`` whose JSON keys are its field names;
nested per-space numbers are written flat as ``"{space}/{name}"`` (``backbone``, ``dense``,
``projector``: the glossary's layer-qualified keys) and per-organ Dice as ``"dice/{organ}"``.
``results.json`` and ``eval.json`` written by earlier versions load: their keys are mapped through
:func:`~collapsekit.glossary.canonical_key` (``effective_rank`` → ``backbone/effective_rank_sigma``,
``proj_mean_cosine`` → ``projector/mean_cosine``, ``final_loss`` → ``loss_global`` …).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from collapsekit.diagnostics.similarity import SimilarityResult
from collapsekit.diagnostics.spectrum import SpectrumResult
from collapsekit.evaluation.segmentation.scoring import SegmentationResult
from collapsekit.experiments.ablation import AblationConfig, Budget
from collapsekit.glossary import canonical_key
from collapsekit.serialization import to_jsonable
from collapsekit.train.records import MetricsRecord

__all__ = [
    "RunEvaluation",
    "SpaceSummary",
    "RunSummary",
    "MethodResult",
    "AblationResults",
    "aggregate",
]


@dataclass(frozen=True)
class RunEvaluation:
    """``eval.json`` of one trained model (or the random baseline) on the evaluation set.

    Attributes:
        backbone: spectrum of the pooled backbone embeddings (rows L2-normalised).
        dense: spectrum of the per-location features of the final map.
        similarity: pairwise cosine of the pooled embeddings (same/different volume split).
        probe: the linear probe's Dice.
    """

    backbone: SpectrumResult
    dense: SpectrumResult
    similarity: SimilarityResult
    probe: SegmentationResult

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name).to_dict() for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunEvaluation:
        """From :meth:`to_dict` output or an earlier ``eval.json`` (``global`` for ``backbone``)."""
        return cls(
            backbone=SpectrumResult.from_dict(d["backbone"] if "backbone" in d else d["global"]),
            dense=SpectrumResult.from_dict(d["dense"]),
            similarity=SimilarityResult.from_dict(d["similarity"]),
            probe=SegmentationResult(**d["probe"]),
        )


@dataclass(frozen=True)
class SpaceSummary:
    """The numbers the report shows for one space (``None``: not measured)."""

    effective_rank_lambda: float | None = None
    effective_rank_sigma: float | None = None
    rankme: float | None = None
    alpha: float | None = None
    mean_cosine: float | None = None

    @classmethod
    def of(cls, s: SpectrumResult, mean_cosine: float | None = None) -> SpaceSummary:
        return cls(
            effective_rank_lambda=s.effective_rank_lambda,
            effective_rank_sigma=s.effective_rank_sigma,
            rankme=s.rankme,
            alpha=s.alpha,
            mean_cosine=mean_cosine,
        )


_SPACES = ("backbone", "dense", "projector")
_SPACE_FIELDS = frozenset(f.name for f in fields(SpaceSummary))
#: Keys of earlier results.json summaries that the glossary does not map.
_OLD_SUMMARY_KEYS = {"final_loss": "loss_global"}


@dataclass(frozen=True)
class RunSummary:
    """The scalars the ablation table shows for one run (or their mean/std over seeds).

    Attributes:
        backbone: pooled backbone on the evaluation set (``mean_cosine``: of its embeddings).
        dense: per-location features on the evaluation set.
        projector: the last monitor row of pretraining (held-out monitor slices).
        loss_global, loss_chance, top1_queue, top1_in_batch, health: the last metrics row.
        mean_dice: the probe's mean over organs; dice: per organ (``None``: absent).
    """

    backbone: SpaceSummary = field(default_factory=SpaceSummary)
    dense: SpaceSummary = field(default_factory=SpaceSummary)
    projector: SpaceSummary = field(default_factory=SpaceSummary)
    loss_global: float | None = None
    loss_chance: float | None = None
    top1_queue: float | None = None
    top1_in_batch: float | None = None
    health: str | None = None
    mean_dice: float | None = None
    dice: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def of(cls, ev: RunEvaluation, last: MetricsRecord | None = None) -> RunSummary:
        """The summary of an evaluation and the run's last metrics row (``None``: baseline)."""
        p = last.projector if last is not None else None
        projector = SpaceSummary(
            effective_rank_lambda=p.effective_rank_lambda if p else None,
            effective_rank_sigma=p.effective_rank_sigma if p else None,
            mean_cosine=p.mean_cosine if p else None,
        )
        return cls(
            backbone=SpaceSummary.of(ev.backbone, ev.similarity.mean_cosine),
            dense=SpaceSummary.of(ev.dense),
            projector=projector,
            loss_global=last.loss_global if last else None,
            loss_chance=last.loss_chance if last else None,
            top1_queue=last.top1_queue if last else None,
            top1_in_batch=last.top1_in_batch if last else None,
            health=last.health if last else None,
            mean_dice=ev.probe.mean_dice,
            dice=dict(ev.probe.dice),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SPACES:
                out.update({f"{f.name}/{k}": v for k, v in asdict(value).items()})
            elif f.name == "dice":
                out.update({f"dice/{organ}": d for organ, d in value.items()})
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSummary:
        """From :meth:`to_dict` output or an earlier results.json summary (keys mapped)."""
        spaces: dict[str, dict[str, Any]] = {s: {} for s in _SPACES}
        scalars: dict[str, Any] = {}
        dice: dict[str, float | None] = {}
        for key, value in d.items():
            if key.startswith("dice/"):
                dice[key[5:]] = value
                continue
            new = canonical_key(_OLD_SUMMARY_KEYS.get(key, key))
            layer, _, name = new.rpartition("/")
            if not layer and name in _SPACE_FIELDS:  # earlier versions: unqualified = backbone
                layer = "backbone"
            if layer in spaces and name in _SPACE_FIELDS:
                spaces[layer][name] = value
            elif not layer and name in {f.name for f in fields(cls)}:
                scalars[name] = value
        made: dict[str, Any] = {s: SpaceSummary(**v) for s, v in spaces.items()}
        return cls(**made, **scalars, dice=dice)


def _mean_std(values: Sequence[Any]) -> tuple[Any, Any]:
    """Mean and sample std of the numbers among ``values``; text: the common value (or the
    distinct values joined by "/"), no std."""
    if any(isinstance(v, str) for v in values):
        distinct = sorted({v for v in values if v is not None})
        return "/".join(distinct) or None, None
    nums = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not nums:
        return None, None
    return float(np.mean(nums)), float(np.std(nums, ddof=1)) if len(nums) > 1 else 0.0


def aggregate(summaries: Sequence[RunSummary]) -> tuple[RunSummary, RunSummary]:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of each field over seeds."""
    rows = [s.to_dict() for s in summaries]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    pairs = {k: _mean_std([r.get(k) for r in rows]) for k in keys}
    mean = RunSummary.from_dict({k: m for k, (m, _) in pairs.items()})
    std = RunSummary.from_dict({k: s for k, (_, s) in pairs.items()})
    return mean, std


@dataclass(frozen=True)
class MethodResult:
    """One method's runs: each seed's evaluation, summary and metrics rows, and their aggregate.

    Attributes:
        method: ``mocov2``, ``local``, ``zca``, ``local+zca`` or ``random``.
        label: how tables and legends name it (``random:resnet18 (BN recalibrated)``).
        local, zca: the method's switches (``None`` for the baseline).
        seeds: number of seeds.
        mean, std: :func:`aggregate` of ``per_seed``.
        history: each seed's ``metrics.jsonl`` rows (empty for the baseline).
    """

    method: str
    label: str
    local: bool | None
    zca: bool | None
    seeds: int
    mean: RunSummary
    std: RunSummary
    per_seed: tuple[RunSummary, ...]
    evals: tuple[RunEvaluation, ...]
    history: tuple[tuple[MetricsRecord, ...], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "label": self.label,
            "local": self.local,
            "zca": self.zca,
            "seeds": self.seeds,
            "mean": self.mean.to_dict(),
            "std": self.std.to_dict(),
            "per_seed": [s.to_dict() for s in self.per_seed],
            "evals": [e.to_dict() for e in self.evals],
            "history": [[r.to_dict() for r in h] for h in self.history],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], method: str | None = None) -> MethodResult:
        """From :meth:`to_dict` output, or an earlier results.json entry (keyed by ``method``,
        whose ``method`` field held the label)."""
        return cls(
            method=method or d["method"],
            label=d.get("label", d["method"]),
            local=d["local"],
            zca=d["zca"],
            seeds=int(d["seeds"]),
            mean=RunSummary.from_dict(d["mean"]),
            std=RunSummary.from_dict(d["std"]),
            per_seed=tuple(RunSummary.from_dict(s) for s in d["per_seed"]),
            evals=tuple(RunEvaluation.from_dict(e) for e in d["evals"]),
            history=tuple(tuple(MetricsRecord.from_dict(r) for r in h) for h in d["history"]),
        )


@dataclass(frozen=True)
class AblationResults:
    """``results.json``: the settings, the pixels' own similarity, and every method's result.

    Attributes:
        config: what was run.
        settings: the budget with its overrides (JSON: the settings that are set).
        pixels: pairwise cosine of the evaluation slices' pixels (64×64).
        methods: the random baseline first, then each method in the order run.
    """

    config: AblationConfig
    settings: Budget
    pixels: SimilarityResult
    methods: tuple[MethodResult, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": to_jsonable(asdict(self.config)),
            "settings": self.settings.to_dict(),
            "pixels": self.pixels.to_dict(),
            "methods": [m.to_dict() for m in self.methods],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AblationResults:
        """From :meth:`to_dict` output or an earlier results.json (``methods`` keyed by name)."""
        methods = d["methods"]
        if isinstance(methods, Mapping):
            parsed = tuple(MethodResult.from_dict(m, method=k) for k, m in methods.items())
        else:
            parsed = tuple(MethodResult.from_dict(m) for m in methods)
        names = {f.name for f in fields(AblationConfig)}
        config = {k: v for k, v in d["config"].items() if k in names}
        config["methods"] = tuple(config.get("methods", ()))
        return cls(
            config=AblationConfig(**config),
            settings=Budget(**d["settings"]),
            pixels=SimilarityResult.from_dict(d["pixels"]),
            methods=parsed,
        )

    def method(self, name: str) -> MethodResult:
        """The result of method ``name`` (``random`` for the baseline).

        Raises:
            KeyError: no such method in these results.
        """
        for m in self.methods:
            if m.method == name:
                return m
        raise KeyError(name)
