"""Live collapse monitoring during pretraining: the spectra of held-out slices in two spaces.

At the end of every epoch (and every ``monitor_every`` steps) a fixed set of monitor slices is
embedded in eval mode and diagnosed in both spaces by :class:`~collapsekit.monitoring.CollapseMonitor`
(the one monitor of collapsekit, also offered to users' own loops): the pooled **backbone** output
(what probes and segmentation use; the input of a pre-projector whitening layer, never its white
output) and the **projector** output (what the contrastive loss sees, where Jing et al. 2022 first
observed dimensional collapse). Each space gets effective rank (λ) and (σ), α, the std of
L2-normalised rows and the mean pairwise cosine; a record goes to ``metrics.jsonl`` and a warning
is raised when the backbone's effective rank drops below a fraction of its width.

At the end of training the same monitor measures the **evaluation set** that ``collapsekit
spectrum RUN`` uses by default (:func:`evaluation_images`: evenly spaced slices of the evaluation
phantom, rows L2-normalised), so ``train`` and ``spectrum`` report one headline rank; it becomes
``spectrum.json``, ``spectrum_projector.json`` and ``spectrum.png``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from collapsekit.data import (
    LoadOptions,
    Volume,
    eval_phantom,
    load_split,
    select_slices,
    slice_tensor,
)
from collapsekit.data.spec import DIAGNOSTICS_CASES
from collapsekit.diagnostics import SpectrumResult
from collapsekit.monitoring import CollapseMonitor, MonitorResult
from collapsekit.plotting import plot_spectrum, save_figure
from collapsekit.progress import ProgressCallback
from collapsekit.serialization import write_json

__all__ = [
    "monitor_images",
    "evaluation_images",
    "evaluation_set",
    "encoder_monitor",
    "monitor_spaces",
    "monitor_report",
    "spectrum_figure",
    "write_final_spectrum",
    "monitor_set",
]


def monitor_images(volumes: Sequence[Volume], samples: int, image_size: int) -> torch.Tensor:
    """The ``(samples, 1, S, S)`` monitor slices: evenly spaced over ``volumes``, resized once."""
    return slice_tensor(volumes, select_slices(volumes, samples), image_size)


def evaluation_images(
    samples: int,
    image_size: int,
    *,
    options: LoadOptions | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """The ``(N, 1, S, S)`` slices ``collapsekit spectrum`` embeds by default: ``samples`` evenly
    spaced slices of all cases of the evaluation phantom (:data:`DIAGNOSTICS_CASES` cases, never
    seen in pretraining), resized to the run's ``image_size``."""
    phantom = eval_phantom(cases=DIAGNOSTICS_CASES, validation=0)
    volumes = load_split(
        "phantom",
        None,
        "all",
        phantom=phantom,
        options=options or LoadOptions(),
        progress=progress,
    )
    return slice_tensor(volumes, select_slices(volumes, samples), image_size)


def evaluation_set(n: int) -> str:
    """How a rank measured on :func:`evaluation_images` is labelled."""
    return f"{n} evaluation-phantom slices, rows L2-normalised"


def monitor_set(n: int) -> str:
    """How a rank measured on the held-out monitor slices is labelled."""
    return f"{n} held-out monitor slices, rows L2-normalised"


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


def write_final_spectrum(
    result: MonitorResult, run_dir: Path, method: str, arch: str, where: str
) -> None:
    """The final spectra: ``spectrum.png`` (backbone and projector), ``spectrum.json`` (backbone)
    and ``spectrum_projector.json``; ``where`` (e.g. :func:`evaluation_set`) goes in the title."""
    backbone, projector = _named(result, method, arch)
    title = f"Spectra after training — {run_dir.name} ({where})"
    fig = spectrum_figure(result, method, arch, title)
    save_figure(fig, run_dir / "spectrum.png")
    write_json(backbone, run_dir / "spectrum.json")
    write_json(projector, run_dir / "spectrum_projector.json")
