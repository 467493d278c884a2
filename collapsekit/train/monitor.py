"""Live collapse monitoring during pretraining: the spectrum of held-out slices, once per epoch.

Every epoch the pooled backbone embeddings of a fixed set of monitor slices are diagnosed
(effective rank, α, std of L2-normalised rows); a record goes to ``metrics.jsonl`` and a warning is
raised when the effective rank drops below a fraction of the backbone width. At the end of training
the last report becomes ``spectrum.json`` and ``spectrum.png``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from collapsekit.data import Volume, select_slices, slice_tensor
from collapsekit.diagnostics import SpectrumResult, spectrum_report
from collapsekit.plotting import plot_spectrum, save_figure
from collapsekit.progress import Message
from collapsekit.serialization import write_json

__all__ = [
    "monitor_images",
    "monitor_report",
    "monitor_record",
    "collapse_warning",
    "write_final_spectrum",
]


def monitor_images(volumes: Sequence[Volume], samples: int, image_size: int) -> torch.Tensor:
    """The ``(samples, 1, S, S)`` monitor slices: evenly spaced over ``volumes``, resized once."""
    return slice_tensor(volumes, select_slices(volumes, samples), image_size)


@torch.no_grad()
def monitor_report(encoder: Any, images: torch.Tensor, batch_size: int = 128) -> SpectrumResult:
    """Spectrum report of the pooled backbone embeddings of ``images`` (eval mode, L2-normalised)."""
    was = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        z = torch.cat(
            [
                encoder.embed(images[i : i + batch_size].to(device)).float().cpu()
                for i in range(0, len(images), batch_size)
            ]
        )
    finally:
        encoder.train(was)
    return spectrum_report(z, name="monitor", normalize=True)


def monitor_record(rep: SpectrumResult) -> dict[str, float]:
    """What metrics.jsonl logs of a monitor report each epoch."""
    return {
        "effective_rank": rep.effective_rank_centered,
        "effective_rank_uncentered": rep.effective_rank_uncentered,
        "alpha": rep.alpha,
        "alpha_r2": rep.alpha_r2,
        "std_l2": rep.std_l2,
    }


def collapse_warning(
    effective_rank: float, width: int, fraction: float, epoch: int
) -> Message | None:
    """A warning when ``effective_rank`` is below ``fraction`` of the backbone ``width``."""
    if effective_rank >= fraction * width:
        return None
    return Message(
        f"epoch {epoch}: effective rank {effective_rank:.1f} is below "
        f"{fraction:.0%} of the backbone width {width}: "
        "the representation is collapsing",
        level="warning",
    )


def write_final_spectrum(rep: SpectrumResult, run_dir: Path, method: str, arch: str) -> None:
    """``spectrum.png`` and ``spectrum.json`` of the final backbone (its last monitor report)."""
    rep = dataclasses.replace(rep, name=f"{method} ({arch})")
    fig, _ = plot_spectrum(rep, title=f"Backbone spectrum after training — {run_dir.name}")
    save_figure(fig, run_dir / "spectrum.png")
    write_json(rep, run_dir / "spectrum.json")
