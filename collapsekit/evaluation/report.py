"""End-to-end diagnostics behind ``collapsekit spectrum`` and ``collapsekit similarity``.

Each input is a model (collapsekit checkpoint or run directory, foreign checkpoint, ``random:ARCH``)
whose embeddings are extracted over a dataset, or a file of embeddings (``.npy``, ``.npz``, ``.pt``
tensor) used as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collapsekit.data import eval_phantom, load_split
from collapsekit.data.spec import DIAGNOSTICS_CASES, DIAGNOSTICS_SAMPLES
from collapsekit.data.volume import Volume
from collapsekit.diagnostics import (
    SpectrumAccumulator,
    as_embeddings,
    pairwise_cosine_stats,
    spectrum_report,
)
from collapsekit.diagnostics.embeddings_io import embeddings_from_object, load_embeddings
from collapsekit.evaluation.extract import (
    Embeddings,
    extract_embeddings,
    pixel_vectors,
)
from collapsekit.progress import ProgressCallback
from collapsekit.runs.checkpoint import safe_torch_load
from collapsekit.runs.models import LoadedModel, load_model, model_from_object
from collapsekit.serialization import write_json

__all__ = [
    "DataSpec",
    "EMBEDDING_SUFFIXES",
    "is_embeddings_file",
    "load_input",
    "load_eval_volumes",
    "embeddings_for",
    "spectrum_analysis",
    "similarity_analysis",
    "write_json",
]

EMBEDDING_SUFFIXES = (".npy", ".npz")
CHUNK = 16384


@dataclass(frozen=True)
class DataSpec:
    """Which slices models are evaluated on (diagnostics default: a phantom of 48 cases)."""

    dataset: str = "phantom"
    data_dir: str | None = None
    split: str = "all"
    samples: int | None = DIAGNOSTICS_SAMPLES
    image_size: int | None = None
    phantom_cases: int = DIAGNOSTICS_CASES


def is_embeddings_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in EMBEDDING_SUFFIXES


def load_input(spec: str, device: str | torch.device = "cpu") -> LoadedModel | np.ndarray:
    """A model, or an ``(N, D)`` array when ``spec`` is an embeddings file (``.pt``: a bare tensor)."""

    if is_embeddings_file(spec):
        return load_embeddings(spec)
    if Path(spec).suffix.lower() in (".pt", ".pth") and Path(spec).is_file():
        obj = safe_torch_load(spec)  # read once: a tensor is embeddings, a dict is weights
        if isinstance(obj, torch.Tensor):
            return embeddings_from_object(obj, spec)
        return model_from_object(obj, spec, device)
    return load_model(spec, device=device)


def load_eval_volumes(data: DataSpec, progress: ProgressCallback | None = None) -> list[Volume]:
    """Preprocessed volumes of ``data.dataset`` (every case with an image by default).

    The phantom is :func:`~collapsekit.data.spec.eval_phantom` with ``data.phantom_cases`` cases,
    all in its training split (``split="all"`` reads them all either way).
    """

    phantom = eval_phantom(cases=data.phantom_cases, validation=0)
    return load_split(data.dataset, data.data_dir, data.split, phantom=phantom, progress=progress)


def _name(spec: str) -> str:
    p = Path(spec)
    if spec.startswith(("random:", "random-raw:")):
        return spec
    if p.is_symlink():  # runs/latest -> the run's own name
        p = p.resolve()
    if p.name == "checkpoint.pt":
        return p.parent.name
    return p.stem if p.suffix else p.name


def embeddings_for(
    specs: Sequence[str],
    data: DataSpec,
    *,
    mode: str = "backbone",
    device: str | torch.device = "cpu",
    drop_nonfinite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Embeddings]:
    """Load each input; extract model embeddings over ``data`` (volumes loaded once)."""

    loaded = [(s, load_input(s, device)) for s in specs]
    volumes: list[Volume] | None = None
    out: list[Embeddings] = []
    for spec, obj in loaded:
        if isinstance(obj, np.ndarray):
            z = as_embeddings(obj, name=spec, drop_nonfinite=drop_nonfinite).cpu().numpy()
            n = len(z)
            out.append(Embeddings(_name(spec), "file", z, np.zeros(n, dtype=int), np.arange(n)))
            continue
        if volumes is None:
            volumes = load_eval_volumes(data, progress)
        size = data.image_size or obj.image_size or 128
        emb = extract_embeddings(
            obj,
            volumes,
            image_size=size,
            samples=data.samples,
            mode=mode,
            device=device,
            # a random baseline is named after extraction recalibrated it
            name=None if obj.kind == "random" else _name(spec),
            progress=progress,
        )
        emb.z = as_embeddings(emb.z, name=spec, drop_nonfinite=drop_nonfinite).cpu().numpy()
        out.append(emb)
    return out


def spectrum_analysis(
    specs: Sequence[str],
    data: DataSpec = DataSpec(),
    *,
    mode: str = "backbone",
    normalize: bool = True,
    device: str | torch.device = "cpu",
    drop_nonfinite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Any]:
    """Spectrum reports (:class:`~collapsekit.diagnostics.SpectrumResult`) of every input."""

    results = []
    for emb in embeddings_for(
        specs, data, mode=mode, device=device, drop_nonfinite=drop_nonfinite, progress=progress
    ):
        name = emb.name if mode == "backbone" or emb.mode == "file" else f"{emb.name} [{mode}]"
        if len(emb.z) > CHUNK:
            acc = SpectrumAccumulator(emb.z.shape[1], normalize=normalize, name=name)
            for i in range(0, len(emb.z), CHUNK):
                acc.update(emb.z[i : i + CHUNK])
            results.append(acc.compute())
        else:
            results.append(spectrum_report(emb.z, name=name, normalize=normalize))
    return results


def similarity_analysis(
    specs: Sequence[str],
    data: DataSpec = DataSpec(),
    *,
    pixels: bool = False,
    mode: str = "backbone",
    device: str | torch.device = "cpu",
    drop_nonfinite: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Any]:
    """Inter-image cosine similarity of each input's embeddings (and of the pixels with ``pixels``)."""

    results = []
    embs = embeddings_for(
        specs, data, mode=mode, device=device, drop_nonfinite=drop_nonfinite, progress=progress
    )
    for emb in embs:
        groups = emb.volume if emb.mode != "file" else None
        results.append(pairwise_cosine_stats(emb.z, groups=groups, name=emb.name))
    if pixels:
        volumes = load_eval_volumes(data, progress)
        x, vol = pixel_vectors(volumes, data.samples, size=64)
        results.insert(0, pairwise_cosine_stats(x, groups=vol, name="pixels (64x64)"))
    return results
