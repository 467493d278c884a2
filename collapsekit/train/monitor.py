"""Live collapse monitoring during pretraining: the spectra of held-out slices in two spaces.

At the end of every epoch (and every ``monitor_every`` steps) a fixed set of monitor slices is
embedded in eval mode and diagnosed in both spaces by :class:`~collapsekit.monitoring.CollapseMonitor`
(the one monitor of collapsekit, also offered to users' own loops): the pooled **backbone** output
(what probes and segmentation use; the input of a pre-projector whitening layer, never its white
output) and the **projector** output (what the contrastive loss sees, where Jing et al. 2022 first
observed dimensional collapse). Each space gets the σ- and λ-based effective ranks, α, the std of
L2-normalised rows and the mean pairwise cosine; a record goes to ``metrics.jsonl`` and a warning
is raised when the backbone's effective rank drops below a fraction of its width. At the end of
training the last backbone report becomes ``spectrum.json`` and ``spectrum.png``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from collapsekit.data import Volume, select_slices, slice_tensor
from collapsekit.diagnostics import SpectrumResult
from collapsekit.monitoring import CollapseMonitor, MonitorResult
from collapsekit.plotting import plot_spectrum, save_figure
from collapsekit.serialization import write_json

__all__ = [
    "monitor_images",
    "encoder_monitor",
    "monitor_spaces",
    "monitor_report",
    "metrics_record",
    "spectrum_figure",
    "write_final_spectrum",
]


def monitor_images(volumes: Sequence[Volume], samples: int, image_size: int) -> torch.Tensor:
    """The ``(samples, 1, S, S)`` monitor slices: evenly spaced over ``volumes``, resized once."""
    return slice_tensor(volumes, select_slices(volumes, samples), image_size)


def encoder_monitor(
    encoder: Any,
    images: torch.Tensor,
    *,
    every: int = 1,
    warn_fraction: float | None = None,
    batch_size: int = 128,
) -> CollapseMonitor:
    """The :class:`CollapseMonitor` of a MoCo query encoder: spaces ``backbone`` (the pooled
    final feature map) and ``projector``, from one forward pass per chunk of ``images``.

    Thresholds raise no Python warning: the training loop turns
    :attr:`~collapsekit.monitoring.MonitorResult.alerts` (backbone effective rank below
    ``warn_fraction`` of its width) into progress messages.
    """

    def embed(x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = encoder.features(x)
        return {"backbone": fmap.mean(dim=(2, 3)), "projector": encoder.project(fmap)}

    return CollapseMonitor(
        embed,
        images,
        every=every,
        module=encoder,
        batch_size=batch_size,
        cosine_samples=2048,
        rank_fraction=warn_fraction,
        warn_spaces=("backbone",),
        warn=False,
        keep_history=False,
    )


def monitor_spaces(encoder: Any, images: torch.Tensor, batch_size: int = 128) -> MonitorResult:
    """Spectrum reports (rows L2-normalised) and pairwise cosines of both spaces, measured now."""
    return encoder_monitor(encoder, images, batch_size=batch_size).measure()


def monitor_report(encoder: Any, images: torch.Tensor, batch_size: int = 128) -> SpectrumResult:
    """Spectrum report of the pooled backbone embeddings of ``images`` (eval mode, L2-normalised)."""
    return monitor_spaces(encoder, images, batch_size)["backbone"].spectrum


def metrics_record(result: MonitorResult) -> dict[str, float]:
    """The monitor fields of a ``metrics.jsonl`` record (``proj_`` prefix for the projector)."""
    b, p = result["backbone"], result["projector"]
    return {
        "effective_rank": b.effective_rank_sigma,
        "effective_rank_uncentered": b.rankme,
        "effective_rank_eigenvalues": b.effective_rank_lambda,
        "alpha": b.alpha,
        "alpha_r2": b.spectrum.alpha_r2,
        "std_l2": b.std_l2,
        "mean_cosine": b.mean_cosine,
        "rank_bound": b.spectrum.rank_bound,
        "proj_effective_rank": p.effective_rank_sigma,
        "proj_effective_rank_eigenvalues": p.effective_rank_lambda,
        "proj_std_l2": p.std_l2,
        "proj_mean_cosine": p.mean_cosine,
    }


def _named(result: MonitorResult, method: str, arch: str) -> tuple[SpectrumResult, SpectrumResult]:
    b, p = result["backbone"].spectrum, result["projector"].spectrum
    return (
        dataclasses.replace(b, name=f"{method} ({arch}) backbone"),
        dataclasses.replace(p, name=f"{method} ({arch}) projector"),
    )


def spectrum_figure(result: MonitorResult, method: str, arch: str, title: str) -> Figure:
    """The backbone and projector spectra of one monitor pass in one figure."""
    fig, _ = plot_spectrum(list(_named(result, method, arch)), title=title)
    return fig


def write_final_spectrum(result: MonitorResult, run_dir: Path, method: str, arch: str) -> None:
    """The final monitor result: ``spectrum.png`` (backbone and projector spectra),
    ``spectrum.json`` (backbone) and ``spectrum_projector.json``."""
    backbone, projector = _named(result, method, arch)
    fig = spectrum_figure(result, method, arch, f"Spectra after training — {run_dir.name}")
    save_figure(fig, run_dir / "spectrum.png")
    write_json(backbone, run_dir / "spectrum.json")
    write_json(projector, run_dir / "spectrum_projector.json")
