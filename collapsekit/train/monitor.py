"""Live collapse monitoring during pretraining: the spectra of held-out slices in two spaces.

At the end of every epoch (and every ``monitor_every`` steps) a fixed set of monitor slices is
embedded in eval mode and diagnosed in both spaces: the pooled **backbone** output (what probes and
segmentation use; the input of a pre-projector whitening layer, never its white output) and the
**projector** output (what the contrastive loss sees, where Jing et al. 2022 first observed
dimensional collapse). Each space gets the σ- and λ-based effective ranks, α, the std of
L2-normalised rows and the mean pairwise cosine; a record goes to ``metrics.jsonl`` and a warning
is raised when the backbone's effective rank drops below a fraction of its width. At the end of
training the last backbone report becomes ``spectrum.json`` and ``spectrum.png``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from collapsekit.data import Volume, select_slices, slice_tensor
from collapsekit.diagnostics import SpectrumResult, pairwise_cosine_stats, spectrum_report
from collapsekit.plotting import plot_spectrum, save_figure
from collapsekit.progress import Message
from collapsekit.serialization import write_json

__all__ = [
    "MonitorReport",
    "monitor_images",
    "monitor_spaces",
    "monitor_report",
    "collapse_warning",
    "write_final_spectrum",
]


def monitor_images(volumes: Sequence[Volume], samples: int, image_size: int) -> torch.Tensor:
    """The ``(samples, 1, S, S)`` monitor slices: evenly spaced over ``volumes``, resized once."""
    return slice_tensor(volumes, select_slices(volumes, samples), image_size)


@dataclass(frozen=True)
class MonitorReport:
    """Diagnostics of the monitor slices in the backbone and projector spaces."""

    backbone: SpectrumResult
    projector: SpectrumResult
    backbone_cosine: float
    projector_cosine: float

    def record(self) -> dict[str, float]:
        """What metrics.jsonl logs (``proj_`` prefix for the projector space)."""
        b, p = self.backbone, self.projector
        return {
            "effective_rank": b.effective_rank_centered,
            "effective_rank_uncentered": b.effective_rank_uncentered,
            "effective_rank_eigenvalues": b.effective_rank_eigenvalues,
            "alpha": b.alpha,
            "alpha_r2": b.alpha_r2,
            "std_l2": b.std_l2,
            "mean_cosine": self.backbone_cosine,
            "rank_bound": b.rank_bound,
            "proj_effective_rank": p.effective_rank_centered,
            "proj_effective_rank_eigenvalues": p.effective_rank_eigenvalues,
            "proj_std_l2": p.std_l2,
            "proj_mean_cosine": self.projector_cosine,
        }


@torch.no_grad()
def _embed_both(
    encoder: Any, images: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone output and projector output of ``images`` (eval mode, restored after)."""
    was = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        emb, proj = [], []
        for i in range(0, len(images), batch_size):
            fmap = encoder.features(images[i : i + batch_size].to(device))
            emb.append(fmap.mean(dim=(2, 3)).float().cpu())
            proj.append(encoder.project(fmap).float().cpu())
    finally:
        encoder.train(was)
    return torch.cat(emb), torch.cat(proj)


def monitor_spaces(encoder: Any, images: torch.Tensor, batch_size: int = 128) -> MonitorReport:
    """Spectrum reports (rows L2-normalised) and mean pairwise cosines of both spaces."""
    emb, proj = _embed_both(encoder, images, batch_size)
    return MonitorReport(
        backbone=spectrum_report(emb, name="monitor backbone", normalize=True),
        projector=spectrum_report(proj, name="monitor projector", normalize=True),
        backbone_cosine=pairwise_cosine_stats(emb, max_samples=2048).mean,
        projector_cosine=pairwise_cosine_stats(proj, max_samples=2048).mean,
    )


def monitor_report(encoder: Any, images: torch.Tensor, batch_size: int = 128) -> SpectrumResult:
    """Spectrum report of the pooled backbone embeddings of ``images`` (eval mode, L2-normalised)."""
    emb, _ = _embed_both(encoder, images, batch_size)
    return spectrum_report(emb, name="monitor", normalize=True)


def collapse_warning(
    effective_rank: float, width: int, fraction: float, step: int
) -> Message | None:
    """A warning when ``effective_rank`` is below ``fraction`` of the backbone ``width``."""
    if effective_rank >= fraction * width:
        return None
    return Message(
        f"step {step}: effective rank {effective_rank:.1f} is below "
        f"{fraction:.0%} of the backbone width {width}: "
        "the representation is collapsing",
        level="warning",
    )


def write_final_spectrum(rep: MonitorReport, run_dir: Path, method: str, arch: str) -> None:
    """The final monitor report: ``spectrum.png`` (backbone and projector spectra),
    ``spectrum.json`` (backbone) and ``spectrum_projector.json``."""
    backbone = dataclasses.replace(rep.backbone, name=f"{method} ({arch}) backbone")
    projector = dataclasses.replace(rep.projector, name=f"{method} ({arch}) projector")
    fig, _ = plot_spectrum([backbone, projector], title=f"Spectra after training — {run_dir.name}")
    save_figure(fig, run_dir / "spectrum.png")
    write_json(backbone, run_dir / "spectrum.json")
    write_json(projector, run_dir / "spectrum_projector.json")
