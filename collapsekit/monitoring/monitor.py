"""A live dimensional-collapse monitor for any PyTorch training loop.

:class:`CollapseMonitor` embeds a fixed held-out set every ``every`` steps, in eval mode and
without gradients, and diagnoses each embedding space with the functions of
:mod:`collapsekit.diagnostics` (no metric is computed here): the σ- and λ-based effective ranks,
RankMe, α-ReQ, the std of L2-normalised rows and the mean pairwise cosine. It warns with
:class:`CollapseWarning` when a space crosses a threshold. ``collapsekit train`` runs the same
monitor; :mod:`collapsekit.monitoring.lightning` wraps it as a Lightning callback.
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
    """

    name: str
    spectrum: SpectrumResult
    similarity: SimilarityResult

    @property
    def effective_rank_sigma(self) -> float:
        """Effective rank of the singular values σ of the centred matrix (``effective_rank_centered``)."""
        return self.spectrum.effective_rank_centered

    @property
    def effective_rank_lambda(self) -> float:
        """Effective rank of the covariance eigenvalues λ = σ²/(N−1) (``effective_rank_eigenvalues``)."""
        return self.spectrum.effective_rank_eigenvalues

    @property
    def rankme(self) -> float:
        """RankMe (Garrido et al. 2023): effective rank of the raw, uncentred matrix's σ."""
        return self.spectrum.effective_rank_uncentered

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
        return self.similarity.mean

    def scalars(self) -> dict[str, float]:
        """The numbers a logger plots, keyed by metric name."""
        return {
            "effective_rank_sigma": self.effective_rank_sigma,
            "effective_rank_lambda": self.effective_rank_lambda,
            "rankme": self.rankme,
            "alpha_req": self.alpha,
            "std_l2": self.std_l2,
            "mean_cosine": self.mean_cosine,
        }


@dataclass(frozen=True)
class MonitorResult:
    """One monitor pass: the diagnostics of every space at ``step``, and the warnings it raised."""

    step: int | None
    spaces: Mapping[str, SpaceMetrics]
    alerts: tuple[str, ...] = ()

    def __getitem__(self, space: str) -> SpaceMetrics:
        return self.spaces[space]

    def scalars(self, prefix: str = "") -> dict[str, float]:
        """``{"<prefix><space>/<metric>": value}`` for every space (NaN values left out)."""
        return {
            f"{prefix}{space}/{key}": value
            for space, metrics in self.spaces.items()
            for key, value in metrics.scalars().items()
            if math.isfinite(value)
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


def _pooled(t: torch.Tensor, space: str) -> torch.Tensor:
    """``(B, D)`` rows on the CPU in float32; feature maps ``(B, C, *spatial)`` average-pooled."""
    if not isinstance(t, torch.Tensor):
        raise InputError(f"CollapseMonitor: space {space!r} gave {type(t).__name__}, not a tensor")
    if t.ndim > 2:
        t = t.flatten(2).mean(dim=2)
    return t.detach().float().cpu()


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

    * a callable ``embed(x) -> (B, D) tensor | {space: (B, D) tensor}`` (a dict gives several
      spaces from one forward pass, e.g. ``{"backbone": h, "projector": z}``), with the module
      whose train/eval mode to switch given as ``module`` (found automatically when ``embed`` is a
      module or a bound method of one);
    * a module and ``layers``: ``{space: submodule name}`` or a list of submodule names, whose
      outputs a forward hook captures during ``module(x)``.

    Outputs with spatial dimensions ``(B, C, H, W)`` are global-average-pooled to ``(B, C)``. A pass
    runs under ``torch.no_grad()`` with every submodule in eval mode (BatchNorm running
    statistics), then restores each submodule's own previous mode. Each space gets
    :func:`~collapsekit.diagnostics.spectrum_report` and
    :func:`~collapsekit.diagnostics.pairwise_cosine_stats`; see :class:`SpaceMetrics`.

    Thresholds (a :class:`CollapseWarning` per space that crosses one; ``None`` turns one off):
    σ-effective rank below ``rank_fraction · D``; std of L2-normalised rows below
    ``std_fraction / √D`` (isotropic data gives ≈ 1/√D); mean pairwise cosine above
    ``max_cosine``.

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
        normalize: L2-normalise rows before the spectrum (Jing et al. 2022's convention).
        cosine_samples: rows used for the pairwise cosine (subsampled with a fixed seed).
        batch_size: chunk size for a tensor ``data``.
        rank_fraction: warn below this fraction of ``D`` (σ-based effective rank).
        std_fraction: warn when ``std_l2 · √D`` is below this.
        max_cosine: warn when the mean pairwise cosine is above this.
        warn_spaces: the spaces the thresholds apply to (default all).
        warn: raise Python warnings (``False``: only :attr:`MonitorResult.alerts`).
        keep_history: append every result to :attr:`history` (off for long runs that log
            elsewhere).

    Raises:
        ConfigError: ``every < 1``, ``layers`` without a module, or an unknown layer name.
    """

    def __init__(
        self,
        embed: Callable[[torch.Tensor], Embeddings] | nn.Module,
        data: torch.Tensor | Iterable[Any],
        *,
        every: int = 100,
        layers: Mapping[str, str] | Sequence[str] | None = None,
        module: nn.Module | None = None,
        normalize: bool = True,
        cosine_samples: int = 2048,
        batch_size: int = 128,
        rank_fraction: float | None = 0.02,
        std_fraction: float | None = None,
        max_cosine: float | None = None,
        warn_spaces: Sequence[str] | None = None,
        warn: bool = True,
        keep_history: bool = True,
    ) -> None:
        if every < 1:
            raise ConfigError(f"CollapseMonitor: every must be >= 1, got {every}")
        if batch_size < 1:
            raise ConfigError(f"CollapseMonitor: batch_size must be >= 1, got {batch_size}")
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
        self.normalize = normalize
        self.cosine_samples = cosine_samples
        self.batch_size = batch_size
        self.rank_fraction = rank_fraction
        self.std_fraction = std_fraction
        self.max_cosine = max_cosine
        self.warn_spaces = None if warn_spaces is None else tuple(warn_spaces)
        self.warn = warn
        self.keep_history = keep_history
        self.history: list[MonitorResult] = []

    # ---- the stateful shell: when to measure, and what is kept
    def due(self, step: int) -> bool:
        """Whether :meth:`maybe_measure` measures at ``step``."""
        return step % self.every == 0

    def maybe_measure(self, step: int) -> MonitorResult | None:
        """:meth:`measure` when ``step % every == 0``, else ``None``."""
        return self.measure(step) if self.due(step) else None

    def measure(self, step: int | None = None) -> MonitorResult:
        """Embed the held-out set and diagnose every space now; warn on crossed thresholds."""
        return self.diagnose(self.embeddings(), step)

    def diagnose(self, spaces: Mapping[str, Any], step: int | None = None) -> MonitorResult:
        """Diagnose given ``{space: (N, D) embeddings}`` (warnings and history as :meth:`measure`)."""
        metrics = {
            name: SpaceMetrics(
                name=name,
                spectrum=spectrum_report(z, name=name, normalize=self.normalize),
                similarity=pairwise_cosine_stats(z, max_samples=self.cosine_samples, name=name),
            )
            for name, z in spaces.items()
        }
        alerts = tuple(a for m in metrics.values() for a in self.alerts(m, step))
        if self.warn:
            for alert in alerts:
                warnings.warn(alert, CollapseWarning, stacklevel=3)
        result = MonitorResult(step=step, spaces=metrics, alerts=alerts)
        if self.keep_history:
            self.history.append(result)
        return result

    def alerts(self, m: SpaceMetrics, step: int | None) -> list[str]:
        """The threshold messages of one space (empty when healthy or not watched)."""
        if self.warn_spaces is not None and m.name not in self.warn_spaces:
            return []
        at = f"step {step}: " if step is not None else ""
        d, out = m.spectrum.d, []
        if self.rank_fraction is not None and m.effective_rank_sigma < self.rank_fraction * d:
            out.append(
                f"{at}effective rank {m.effective_rank_sigma:.1f} is below "
                f"{self.rank_fraction:.0%} of the {m.name} width {d}: "
                "the representation is collapsing"
            )
        if self.std_fraction is not None and m.std_l2 * math.sqrt(d) < self.std_fraction:
            out.append(
                f"{at}{m.name} std of L2-normalised embeddings {m.std_l2:.4f} is below "
                f"{self.std_fraction:g}/√{d}: the representation is collapsing"
            )
        if self.max_cosine is not None and m.mean_cosine > self.max_cosine:
            out.append(
                f"{at}{m.name} mean pairwise cosine {m.mean_cosine:.3f} is above "
                f"{self.max_cosine:g}: the embeddings are collapsing to one direction"
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

    @torch.no_grad()
    def embeddings(self) -> dict[str, torch.Tensor]:
        """``{space: (N, D) float32 CPU tensor}`` of the held-out set (eval mode, no gradients)."""
        modes = [] if self.module is None else [(m, m.training) for m in self.module.modules()]
        if self.module is not None:
            self.module.eval()
        device = self._device()
        chunks: dict[str, list[torch.Tensor]] = {}
        try:
            for batch in self._batches():
                x = _input_of(batch)
                x = x if device is None else x.to(device)
                for name, t in self._forward(x).items():
                    chunks.setdefault(name, []).append(_pooled(t, name))
        finally:
            for m, was in modes:
                m.training = was
        if not chunks:
            raise InputError("CollapseMonitor: the held-out data yielded no batch")
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
