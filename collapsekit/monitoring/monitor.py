"""A live dimensional-collapse monitor for any PyTorch training loop.

:class:`CollapseMonitor` embeds a fixed held-out set every ``every`` steps, in eval mode and
without gradients, and diagnoses each embedding space with the functions of
:mod:`collapsekit.diagnostics` (no metric is computed here): effective rank (λ) and (σ),
RankMe, α-ReQ, the std of L2-normalised rows and the mean pairwise cosine (names as in
:mod:`collapsekit.glossary`). It warns with :class:`CollapseWarning` when a space crosses a
threshold and gives each pass a health verdict
(:func:`~collapsekit.diagnostics.health.health_verdict`). ``collapsekit train`` runs the same
monitor; :mod:`collapsekit.monitoring.lightning` wraps it as a Lightning callback.

Model outputs are pooled to ``(B, D)`` by :func:`~collapsekit.diagnostics.pooling.pool_features`
(maps: mean over space; ``(B, N, D)`` tokens: mean over tokens, or ``pool="cls"``/a callable), and
the rule applied is part of the result. A ``DistributedDataParallel`` or ``torch.compile`` wrapper is
unwrapped (``.module``, ``._orig_mod``): the monitor runs the plain module, so measuring on rank 0
alone does not enter DDP's collective forward, and layer names are those of the plain module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from collapsekit.diagnostics import (
    SimilarityResult,
    SpectrumResult,
    pairwise_cosine_stats,
    spectrum_report,
)
from collapsekit.diagnostics.health import (
    COLLAPSED_COSINE,
    COLLAPSED_RANK,
    HealthVerdict,
    health_verdict,
)
from collapsekit.diagnostics.pooling import POOL_CHOICES, Pool, pool_features
from collapsekit.errors import ConfigError, InputError

__all__ = ["CollapseWarning", "SpaceMetrics", "MonitorResult", "CollapseMonitor"]

Embeddings = torch.Tensor | Mapping[str, torch.Tensor]


class CollapseWarning(UserWarning):
    """A monitored embedding space crossed a collapse threshold (filter it with ``warnings``)."""


@dataclass(frozen=True)
class SpaceMetrics:
    """Collapse diagnostics of one embedding space of the held-out set.

    Attributes:
        name: the space (``"backbone"``, ``"projector"``, ``"embeddings"``, a layer name).
        spectrum: :func:`~collapsekit.diagnostics.spectrum_report` of the ``(N, D)`` embeddings
            (rows L2-normalised unless the monitor says otherwise).
        similarity: :func:`~collapsekit.diagnostics.pairwise_cosine_stats` of the same rows.
        pooling: how the model output became ``(N, D)`` rows, e.g. ``"mean over tokens of (64,
            16, 64)"`` (see :func:`~collapsekit.diagnostics.pooling.pool_features`).
    """

    name: str
    spectrum: SpectrumResult
    similarity: SimilarityResult
    pooling: str = "as given"

    @property
    def effective_rank_sigma(self) -> float:
        """Effective rank of the singular values σ of the centred matrix."""
        return self.spectrum.effective_rank_sigma

    @property
    def effective_rank_lambda(self) -> float:
        """Effective rank of the covariance eigenvalues λ = σ²/(N−1): the one that shows collapse."""
        return self.spectrum.effective_rank_lambda

    @property
    def rankme(self) -> float:
        """RankMe (Garrido et al. 2023): effective rank of the raw, uncentred matrix's σ."""
        return self.spectrum.rankme

    @property
    def alpha(self) -> float:
        """α-ReQ power-law exponent of the eigenspectrum (NaN below 2 positive values)."""
        return self.spectrum.alpha

    @property
    def std_l2(self) -> float:
        """Std of the L2-normalised rows: ≈ 1/√D healthy, 0 collapsed."""
        return self.spectrum.std_l2

    @property
    def mean_cosine(self) -> float:
        """Mean pairwise cosine over ``i < j``: 1 when every row points the same way."""
        return self.similarity.mean_cosine

    def scalars(self) -> dict[str, float]:
        """The numbers a logger plots, keyed by their glossary name."""
        return {
            "effective_rank_sigma": self.effective_rank_sigma,
            "effective_rank_lambda": self.effective_rank_lambda,
            "rankme": self.rankme,
            "alpha": self.alpha,
            "std_l2": self.std_l2,
            "mean_cosine": self.mean_cosine,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the scalars (NaN as ``None``) with the set they were measured on."""
        out: dict[str, Any] = {
            "n": self.spectrum.n,
            "d": self.spectrum.d,
            "normalized": self.spectrum.normalized,
            "pooling": self.pooling,
            "rank_bound": self.spectrum.rank_bound,
        }
        out.update({k: (v if math.isfinite(v) else None) for k, v in self.scalars().items()})
        return out


@dataclass(frozen=True)
class MonitorResult:
    """One monitor pass: the diagnostics of every space at ``step``, the warnings it raised and a
    health verdict.

    Attributes:
        step: the training step (``None`` when measured outside a loop).
        spaces: ``{space: SpaceMetrics}``.
        alerts: the threshold messages (raised as :class:`CollapseWarning` unless ``warn=False``).
        health: :func:`~collapsekit.diagnostics.health.health_verdict` of ``health_space`` (its
            mean cosine and effective rank (λ), plus any loss/top-1 given to :meth:`CollapseMonitor.measure`);
            ``unknown`` when only collapse signals were given and they passed.
        health_space: the space the verdict reads (``"projector"`` when there is one, else the
            last space).
    """

    step: int | None
    spaces: Mapping[str, SpaceMetrics]
    alerts: tuple[str, ...] = ()
    health: HealthVerdict | None = None
    health_space: str | None = None

    def __getitem__(self, space: str) -> SpaceMetrics:
        return self.spaces[space]

    def scalars(self, prefix: str = "") -> dict[str, float]:
        """``{"<prefix><space>/<name>": value}`` for every space (NaN values left out)."""
        return {
            f"{prefix}{space}/{key}": value
            for space, metrics in self.spaces.items()
            for key, value in metrics.scalars().items()
            if math.isfinite(value)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: step, health, alerts and every space's :meth:`SpaceMetrics.to_dict`."""
        return {
            "step": self.step,
            "health": None if self.health is None else self.health.to_dict(),
            "health_space": self.health_space,
            "alerts": list(self.alerts),
            "spaces": {name: m.to_dict() for name, m in self.spaces.items()},
        }


def _input_of(batch: Any) -> torch.Tensor:
    """The model input of one held-out batch: a tensor, the first item of a tuple/list (``(x,
    y)``), or ``batch["image"]`` of a dict (MONAI samples)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping) and isinstance(batch.get("image"), torch.Tensor):
        return batch["image"]
    raise InputError(
        "CollapseMonitor: a held-out batch must be a tensor, a (tensor, ...) tuple or a dict with "
        f"an 'image' tensor, got {type(batch).__name__}"
    )


def _unwrap(module: Any) -> Any:
    """The plain module inside ``DistributedDataParallel``/``DataParallel`` (``.module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, however nested; anything else unchanged."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(module, nn.Module) and isinstance(
            getattr(module, "_orig_mod", None), nn.Module
        ):
            module = module._orig_mod
        else:
            return module


def _unwrap_name(name: str) -> str:
    """A submodule name spelled for a wrapper, as the plain module spells it (leading ``module.``
    and ``_orig_mod.`` dropped)."""
    parts = name.split(".")
    while parts and parts[0] in ("module", "_orig_mod"):
        parts = parts[1:]
    return ".".join(parts)


def _unwrap_embed(embed: Any) -> Any:
    """``embed`` with a wrapped module (or a bound method of one) replaced by the plain module."""
    if isinstance(embed, nn.Module):
        return _unwrap(embed)
    owner = getattr(embed, "__self__", None)
    func = getattr(embed, "__func__", None)
    if isinstance(owner, nn.Module) and func is not None and _unwrap(owner) is not owner:
        plain = _unwrap(owner)
        method = getattr(plain, func.__name__, None)
        # DDP.forward runs the collective forward: its plain counterpart is the module itself
        return plain if func.__name__ == "forward" or method is None else method
    return embed


def _as_spaces(out: Embeddings) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {"embeddings": out}
    if isinstance(out, Mapping) and out:
        return dict(out)
    raise InputError(
        "CollapseMonitor: the embedding function must return a tensor or a non-empty "
        f"{{space: tensor}} dict, got {type(out).__name__}"
    )


class CollapseMonitor:
    """Every ``every`` steps, diagnose the embeddings of a fixed held-out set for collapse.

    Two ways to say what to embed:

    * a callable ``embed(x) -> tensor | {space: tensor}`` (a dict gives several spaces from one
      forward pass, e.g. ``{"backbone": h, "projector": z}``), with the module whose train/eval
      mode to switch given as ``module`` (found automatically when ``embed`` is a module or a bound
      method of one);
    * a module and ``layers``: ``{space: submodule name}`` or a list of submodule names, whose
      outputs a forward hook captures during ``module(x)``.

    ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile`` wrappers are unwrapped
    (``.module``/``._orig_mod``); layer names are those of the plain module (a leading
    ``module.``/``_orig_mod.`` is accepted and dropped). Under DDP, measure on one rank: the plain
    module's forward has no collective, so the other ranks need not join.

    Outputs are pooled to ``(B, D)`` by :func:`~collapsekit.diagnostics.pooling.pool_features`:
    ``(B, D)`` as is, ``(B, C, H, W)`` and ``(B, C, D, H, W)`` averaged over space, ``(B, N, D)``
    tokens averaged over tokens (``pool="cls"`` takes the first token; a callable does anything
    else); a map that reads two ways (``(B, 7, 7, 768)``) needs ``pool="channels_last"`` or
    ``"channels_first"``; any other shape is refused. The rule applied is :attr:`SpaceMetrics.pooling`. A pass runs
    under ``torch.no_grad()`` with every submodule in eval mode (BatchNorm running statistics), then
    restores each submodule's own previous mode. Each space gets
    :func:`~collapsekit.diagnostics.spectrum_report` and
    :func:`~collapsekit.diagnostics.pairwise_cosine_stats`; see :class:`SpaceMetrics`.

    Thresholds (a :class:`CollapseWarning` per crossing; ``None`` turns one off). The defaults are
    those of :mod:`collapsekit.diagnostics.health` for a *completely* collapsed space:

    * ``min_rank_lambda`` (1.5): effective rank (λ) below it, in every watched space;
    * ``max_cosine`` (0.95): mean pairwise cosine at or above it, in the ``health_space`` only
      (pooled ReLU features are nonnegative, so a healthy backbone reads 0.97 and more);
    * optional: ``rank_fraction`` (effective rank (σ) below ``rank_fraction · D``, the rule
      ``collapsekit train`` used) and ``std_fraction`` (``std_l2 · √D`` below it).

    Args:
        embed: the callable or module (see above).
        data: the held-out set: an ``(N, ...)`` tensor (embedded in chunks of ``batch_size``), or
            any iterable of batches (a DataLoader) yielding tensors, ``(x, ...)`` tuples or dicts
            with an ``"image"`` tensor. Use the same fixed set at every step.
        every: measure when ``step % every == 0`` (see :meth:`maybe_measure`).
        layers: submodule names to hook (``embed`` must then be a module).
        module: the module to put in eval mode, and whose first parameter's device the batches
            are moved to (default: inferred from ``embed``; with neither, mode and device are
            left alone).
        pool: the pooling rule (:func:`~collapsekit.diagnostics.pooling.pool_features`):
            ``"mean"`` (default), ``"cls"`` for ``(B, N, D)`` tokens, ``"channels_first"`` /
            ``"channels_last"`` for maps the default cannot read one way, a callable, or
            ``{space: rule}`` (spaces not named use ``"mean"``).
        normalize: L2-normalise rows before the spectrum (Jing et al. 2022's convention).
        cosine_samples: rows used for the pairwise cosine (subsampled with a fixed seed).
        batch_size: chunk size for a tensor ``data``.
        min_rank_lambda: warn when a space's effective rank (λ) is below this.
        max_cosine: warn when the health space's mean pairwise cosine is at or above this.
        rank_fraction: warn when effective rank (σ) is below this fraction of ``D``.
        std_fraction: warn when ``std_l2 · √D`` is below this.
        warn_spaces: the spaces the thresholds apply to (default all).
        health_space: the space the health verdict and ``max_cosine`` read (default
            ``"projector"`` when there is one, else the last space).
        warn: raise Python warnings (``False``: only :attr:`MonitorResult.alerts`).
        keep_history: append every result to :attr:`history` (off for long runs that log
            elsewhere).

    Raises:
        ConfigError: ``every < 1``, ``layers`` without a module, an unknown layer name or a bad
            ``pool``.
    """

    def __init__(
        self,
        embed: Callable[[torch.Tensor], Embeddings] | nn.Module,
        data: torch.Tensor | Iterable[Any],
        *,
        every: int = 100,
        layers: Mapping[str, str] | Sequence[str] | None = None,
        module: nn.Module | None = None,
        pool: Pool | Mapping[str, Pool] = "mean",
        normalize: bool = True,
        cosine_samples: int = 2048,
        batch_size: int = 128,
        min_rank_lambda: float | None = COLLAPSED_RANK,
        max_cosine: float | None = COLLAPSED_COSINE,
        rank_fraction: float | None = None,
        std_fraction: float | None = None,
        warn_spaces: Sequence[str] | None = None,
        health_space: str | None = None,
        warn: bool = True,
        keep_history: bool = True,
    ) -> None:
        if every < 1:
            raise ConfigError(f"CollapseMonitor: every must be >= 1, got {every}")
        if batch_size < 1:
            raise ConfigError(f"CollapseMonitor: batch_size must be >= 1, got {batch_size}")
        for rule in pool.values() if isinstance(pool, Mapping) else (pool,):
            if not callable(rule) and rule not in POOL_CHOICES:
                raise ConfigError(
                    f"CollapseMonitor: pool must be one of {', '.join(POOL_CHOICES)} or a "
                    f"callable, got {rule!r}"
                )
        embed = _unwrap_embed(embed)
        module = _unwrap(module)
        if module is None:
            owner = getattr(embed, "__self__", None)
            module = embed if isinstance(embed, nn.Module) else owner
            module = module if isinstance(module, nn.Module) else None
        self.layers: dict[str, str] | None = None
        if layers is not None:
            if not isinstance(embed, nn.Module):
                raise ConfigError(
                    "CollapseMonitor: layers=... needs a module to hook, not a function"
                )
            names = {n: n for n in layers} if not isinstance(layers, Mapping) else dict(layers)
            known = dict(embed.named_modules())
            # a name spelled for the wrapper ("module.backbone") resolves on the plain module
            names = {s: n if n in known else _unwrap_name(n) for s, n in names.items()}
            for name in names.values():
                if name not in known:
                    raise ConfigError(
                        f"CollapseMonitor: {type(embed).__name__} has no submodule {name!r} "
                        f"(some it has: {', '.join(list(known)[1:6])})"
                    )
            self.layers = names
        self.embed = embed
        self.module = module
        self.data = data
        self.every = int(every)
        self.pool = pool
        self.normalize = normalize
        self.cosine_samples = cosine_samples
        self.batch_size = batch_size
        self.min_rank_lambda = min_rank_lambda
        self.max_cosine = max_cosine
        self.rank_fraction = rank_fraction
        self.std_fraction = std_fraction
        self.warn_spaces = None if warn_spaces is None else tuple(warn_spaces)
        self.health_space = health_space
        self.warn = warn
        self.keep_history = keep_history
        self.history: list[MonitorResult] = []
        self._pooling: dict[str, str] = {}

    # ---- the stateful shell: when to measure, and what is kept
    def due(self, step: int) -> bool:
        """Whether :meth:`maybe_measure` measures at ``step``."""
        return step % self.every == 0

    def maybe_measure(self, step: int, **signals: float | int | None) -> MonitorResult | None:
        """:meth:`measure` when ``step % every == 0``, else ``None``."""
        return self.measure(step, **signals) if self.due(step) else None

    def measure(self, step: int | None = None, **signals: float | int | None) -> MonitorResult:
        """Embed the held-out set and diagnose every space now; warn on crossed thresholds.

        Args:
            step: the training step (for messages and loggers).
            signals: training signals for the health verdict, as
                :func:`~collapsekit.diagnostics.health.health_verdict` takes them
                (``loss_global``, ``queue_size``, ``top1_in_batch``, ``batch_size``).
        """
        spaces = self.embeddings()
        return self.diagnose(spaces, step, pooling=self._pooling, **signals)

    def _health_space(self, names: Sequence[str]) -> str:
        if self.health_space is not None:
            if self.health_space not in names:
                raise ConfigError(
                    f"CollapseMonitor: health_space {self.health_space!r} is not a space "
                    f"(spaces: {', '.join(names)})"
                )
            return self.health_space
        return "projector" if "projector" in names else names[-1]

    def diagnose(
        self,
        spaces: Mapping[str, Any],
        step: int | None = None,
        *,
        pooling: Mapping[str, str] | None = None,
        **signals: float | int | None,
    ) -> MonitorResult:
        """Diagnose given ``{space: (N, D) embeddings}`` (warnings, verdict and history as
        :meth:`measure`); ``pooling`` records how each space was pooled."""
        pooling = pooling or {}
        metrics = {
            name: SpaceMetrics(
                name=name,
                spectrum=spectrum_report(z, name=name, normalize=self.normalize),
                similarity=pairwise_cosine_stats(z, max_samples=self.cosine_samples, name=name),
                pooling=pooling.get(name, "as given"),
            )
            for name, z in spaces.items()
        }
        if not metrics:
            raise InputError("CollapseMonitor: no embedding space to diagnose")
        health_space = self._health_space(list(metrics))
        h = metrics[health_space]
        try:
            verdict = health_verdict(
                mean_cosine=h.mean_cosine,
                effective_rank_lambda=h.effective_rank_lambda,
                **signals,  # type: ignore[arg-type]
            )
        except TypeError as exc:
            raise ConfigError(f"CollapseMonitor: {exc}") from exc
        alerts = tuple(
            a for m in metrics.values() for a in self.alerts(m, step, m.name == health_space)
        )
        if self.warn:
            for alert in alerts:
                warnings.warn(alert, CollapseWarning, stacklevel=3)
        result = MonitorResult(
            step=step, spaces=metrics, alerts=alerts, health=verdict, health_space=health_space
        )
        if self.keep_history:
            self.history.append(result)
        return result

    def alerts(self, m: SpaceMetrics, step: int | None, health_space: bool = True) -> list[str]:
        """The threshold messages of one space (empty when healthy or not watched); each says
        the set the number was measured on."""
        if self.warn_spaces is not None and m.name not in self.warn_spaces:
            return []
        at = f"step {step}: " if step is not None else ""
        on = f"(D={m.spectrum.d}; {m.spectrum.measured_on})"
        out = []
        if self.min_rank_lambda is not None and m.effective_rank_lambda < self.min_rank_lambda:
            out.append(
                f"{at}{m.name} effective_rank_lambda {m.effective_rank_lambda:.2f} is below "
                f"{self.min_rank_lambda:g} {on}: the embeddings have collapsed to about one "
                "direction"
            )
        if self.max_cosine is not None and health_space and m.mean_cosine >= self.max_cosine:
            out.append(
                f"{at}{m.name} mean_cosine {m.mean_cosine:.3f} is at or above "
                f"{self.max_cosine:g} ({m.similarity.n_samples} rows): the embeddings are "
                "collapsing to one point"
            )
        d = m.spectrum.d
        if self.rank_fraction is not None and m.effective_rank_sigma < self.rank_fraction * d:
            out.append(
                f"{at}{m.name} effective_rank_sigma {m.effective_rank_sigma:.1f} is below "
                f"{self.rank_fraction:.0%} of the width {on}: the representation is collapsing"
            )
        if self.std_fraction is not None and m.std_l2 * math.sqrt(d) < self.std_fraction:
            out.append(
                f"{at}{m.name} std_l2 {m.std_l2:.4f} is below {self.std_fraction:g}/√{d} "
                f"{on}: the representation is collapsing"
            )
        return out

    # ---- embedding
    def _batches(self) -> Iterator[Any]:
        if isinstance(self.data, torch.Tensor):
            yield from self.data.split(self.batch_size)
        else:
            yield from self.data

    def _device(self) -> torch.device | None:
        if self.module is None:
            return None
        p = next(self.module.parameters(), None)
        return None if p is None else p.device

    def _pool_of(self, space: str) -> Pool:
        if isinstance(self.pool, Mapping):
            return self.pool.get(space, "mean")
        return self.pool

    @torch.no_grad()
    def embeddings(self) -> dict[str, torch.Tensor]:
        """``{space: (N, D) float32 CPU tensor}`` of the held-out set (eval mode, no gradients);
        the pooling rule of each space is kept for the next :meth:`diagnose`."""
        modes = [] if self.module is None else [(m, m.training) for m in self.module.modules()]
        if self.module is not None:
            self.module.eval()
        device = self._device()
        chunks: dict[str, list[torch.Tensor]] = {}
        rules: dict[str, str] = {}
        try:
            for batch in self._batches():
                x = _input_of(batch)
                x = x if device is None else x.to(device)
                for name, t in self._forward(x).items():
                    rows, rule = pool_features(t, pool=self._pool_of(name), name=name)
                    rules.setdefault(name, rule.replace(f"({t.shape[0]},", "(B,", 1))
                    chunks.setdefault(name, []).append(rows.detach().float().cpu())
        finally:
            for m, was in modes:
                m.training = was
        if not chunks:
            raise InputError("CollapseMonitor: the held-out data yielded no batch")
        self._pooling = rules
        return {name: torch.cat(parts) for name, parts in chunks.items()}

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.layers is None:
            return _as_spaces(self.embed(x))
        assert isinstance(self.embed, nn.Module)
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for space, name in self.layers.items():

            def hook(_m: nn.Module, _i: Any, out: Any, space: str = space) -> None:
                captured[space] = out[0] if isinstance(out, (tuple, list)) else out

            handles.append(self.embed.get_submodule(name).register_forward_hook(hook))
        try:
            self.embed(x)
        finally:
            for h in handles:
                h.remove()
        return {space: captured[space] for space in self.layers}
