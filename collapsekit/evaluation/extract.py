"""Embeddings of a model over CT slices: pooled backbone output, projector output, dense features.

Extraction runs under ``torch.no_grad()`` with the model in eval mode (BatchNorm and ZCA use their
running statistics). Slices are chosen deterministically (evenly spaced over the usable slices of all
volumes), resized to ``image_size`` and batched.

What is reported for a whitened model: with ZCA before the projector, the pooled backbone output is
the feature *entering* the whitening layer; whitened output is flat by construction and says nothing.
With ZCA inside the last residual block the backbone output is the sum of a whitened branch and the
identity path followed by ReLU, so it is not trivially white and is reported as is.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from collapsekit.data.slices import select_slices, slice_tensor
from collapsekit.data.volume import Volume
from collapsekit.diagnostics import pool_features
from collapsekit.errors import InputError
from collapsekit.models import recalibrate_batch_norm
from collapsekit.options import look_up_option
from collapsekit.progress import (
    Message,
    ProgressCallback,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    emit,
)
from collapsekit.runs.models import LoadedModel

__all__ = ["Embeddings", "extract_embeddings", "pixel_vectors", "recalibrate_baseline"]

MODES = ("backbone", "head", "dense")

#: Slices (evenly spaced over the given volumes) that re-estimate a random baseline's BatchNorm.
CALIBRATION_SLICES = 1024


def recalibrate_baseline(
    model: LoadedModel,
    volumes: Sequence[Volume],
    image_size: int,
    progress: ProgressCallback | None = None,
) -> LoadedModel:
    """The random baseline ``model`` with its BatchNorm statistics re-estimated on ``volumes``.

    Raw init statistics (mean 0, variance 1) mean no normalisation in eval mode, which inflates
    pairwise cosines and distorts spectra and probes; the honest random baseline re-estimates them
    on the data (:func:`~collapsekit.models.recalibrate_batch_norm` over
    :data:`CALIBRATION_SLICES` evenly spaced slices; no weight changes). Call it on a model that
    :func:`~collapsekit.runs.models.load_model` returned for ``random:ARCH`` (``calibrate_bn``
    set) before extracting embeddings or probing; other models are returned as they are.

    Returns:
        A new :class:`~collapsekit.runs.models.LoadedModel` named ``"<name> (BN recalibrated)"``
        with a recalibrated copy of the backbone and ``calibrate_bn`` False; ``model`` itself is
        not changed.
    """
    if not model.calibrate_bn:
        return model
    index = select_slices(volumes, CALIBRATION_SLICES)
    images = slice_tensor(volumes, index, image_size)
    backbone = copy.deepcopy(model.backbone)
    recalibrate_batch_norm(backbone, images)
    calibrated = dataclasses.replace(
        model,
        name=f"{model.name} (BN recalibrated)",
        backbone=backbone,
        calibrate_bn=False,
    )
    emit(
        progress,
        Message(f"{calibrated.name}: BatchNorm statistics re-estimated on {len(index)} slices"),
    )
    return calibrated


@dataclass
class Embeddings:
    """Embeddings with their provenance.

    Attributes:
        name: model name.
        mode: ``backbone`` (pooled), ``head`` (projector output) or ``dense`` (per location).
        z: float32 ``(N, D)``.
        volume: ``(N,)`` index of the source volume of each row (for same/different-volume splits).
        slice: ``(N,)`` slice index of each row.
        pooling: how the model output became rows (:func:`~collapsekit.diagnostics.pool_features`
            for ``backbone``/``head``, e.g. ``"as is (B, 512)"``; the per-location rule for
            ``dense``; ``"file"`` for embeddings read from a file).
    """

    name: str
    mode: str
    z: np.ndarray
    volume: np.ndarray
    slice: np.ndarray
    pooling: str = "file"


def _model_parts(model: Any) -> tuple[Any, Any]:
    """``(backbone, encoder or None)`` of a LoadedModel, a collapsekit Encoder or a bare backbone."""
    backbone = getattr(model, "backbone", model)
    if hasattr(model, "encoder"):  # LoadedModel
        return backbone, model.encoder
    return backbone, model if hasattr(model, "projector") else None  # Encoder / backbone


@torch.no_grad()
def extract_embeddings(
    model: Any,
    volumes: Sequence[Volume],
    *,
    image_size: int = 128,
    samples: int | None = 2048,
    mode: str = "backbone",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    max_locations: int | None = 64,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Embeddings:
    """Embed CT slices with ``model``.

    Args:
        model: a :class:`~collapsekit.runs.models.LoadedModel`, a collapsekit ``Encoder``, or
            any backbone with ``forward`` (pooled) and ``forward_features`` (map).
        volumes: preprocessed volumes.
        image_size: slices are resized to ``image_size``².
        samples: number of slices (evenly spaced); ``None`` for all.
        mode: ``backbone`` (global-average-pooled final map, ``(N, C)``), ``head`` (projector output;
            needs a collapsekit checkpoint) or ``dense`` (per-location features of the final map,
            ``(N·h·w, C)``, at most ``max_locations`` evenly spaced locations per slice).
        batch_size: slices per forward pass.
        device: where to run.
        name: label for the result (defaults to the model's name).
        progress: progress callback (events ``extract``).

    Returns:
        :class:`Embeddings`.

    Raises:
        InputError: ``model`` is a random baseline whose BatchNorm statistics were not
            re-estimated yet (call :func:`recalibrate_baseline` first), or ``mode="head"`` for a
            model without a projector.
    """
    mode = look_up_option(mode, MODES, "embedding mode")
    if getattr(model, "calibrate_bn", False):
        raise InputError(
            f"{model.name} is a random baseline whose BatchNorm statistics are raw init: call "
            "recalibrate_baseline(model, volumes, image_size) first (or load random-raw:ARCH)"
        )
    backbone, encoder = _model_parts(model)
    if mode == "head" and encoder is None:
        raise InputError("--head needs a collapsekit checkpoint (this model has no projector)")
    label = name or getattr(model, "name", None) or type(model).__name__
    index = select_slices(volumes, samples)
    was_training = [(m, m.training) for m in (backbone, encoder) if m is not None]
    for m, _ in was_training:
        m.eval()
    zs: list[np.ndarray] = []
    pooling = ""
    vols: list[np.ndarray] = []
    sls: list[np.ndarray] = []
    emit(progress, TaskStarted("extract", total=len(index), description=f"embedding {label}"))
    try:
        for start in range(0, len(index), batch_size):
            chunk = index[start : start + batch_size]
            x = slice_tensor(volumes, chunk, image_size).to(device)
            v = np.array([c[0] for c in chunk])
            s = np.array([c[1] for c in chunk])
            if mode in ("backbone", "head"):
                out = backbone(x) if mode == "backbone" else encoder(x)
                z, rule = pool_features(out, name=f"{label} {mode} output")
                pooling = rule.replace(f"({len(chunk)},", "(B,", 1)
            else:
                fmap = backbone.forward_features(x)  # B×C×h×w
                b, c, h, w = fmap.shape
                flat = fmap.permute(0, 2, 3, 1).reshape(b, h * w, c)
                if max_locations is not None and h * w > max_locations:
                    keep = (
                        torch.linspace(0, h * w - 1, max_locations).round().long().to(flat.device)
                    )
                    flat = flat[:, keep]
                n_loc = flat.shape[1]
                pooling = f"{n_loc} locations per slice of (B, {c}, {h}, {w}), not pooled"
                z = flat.reshape(b * n_loc, c)
                v = np.repeat(v, n_loc)
                s = np.repeat(s, n_loc)
            zs.append(z.float().cpu().numpy())
            vols.append(v)
            sls.append(s)
            emit(progress, TaskAdvanced("extract", advance=len(chunk)))
    finally:
        for m, flag in was_training:
            m.train(flag)
    emit(progress, TaskFinished("extract"))
    return Embeddings(
        name=label,
        mode=mode,
        z=np.concatenate(zs),
        volume=np.concatenate(vols),
        slice=np.concatenate(sls),
        pooling=pooling,
    )


def pixel_vectors(
    volumes: Sequence[Volume], samples: int | None = 2048, size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Flattened, downsampled slices ``(N, size²)`` and their volume ids: pixel-space similarity."""
    index = select_slices(volumes, samples)
    x = slice_tensor(volumes, index, size)
    return x.reshape(len(index), -1).numpy(), np.array([i[0] for i in index])
