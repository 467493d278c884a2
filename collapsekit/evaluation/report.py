"""End-to-end diagnostics behind ``collapsekit spectrum`` and ``collapsekit similarity``.

Each input is a model (collapsekit checkpoint or run directory, foreign checkpoint, ``random:ARCH``)
whose embeddings are extracted over a dataset, or a file of embeddings (``.npy``, ``.npz``, ``.pt``
tensor) used as is. :func:`spectrum_analysis` and :func:`similarity_analysis` compute;
:func:`write_spectrum_report` and :func:`write_similarity_report` also write the JSON and the figure
into a directory (what the commands do, in one call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collapsekit.data import LoadOptions, eval_phantom, load_split
from collapsekit.data.preprocess import PreprocessConfig
from collapsekit.data.spec import DIAGNOSTICS_CASES, DIAGNOSTICS_SAMPLES
from collapsekit.data.volume import Volume
from collapsekit.diagnostics import (
    SimilarityResult,
    SpectrumAccumulator,
    SpectrumResult,
    as_embeddings,
    pairwise_cosine_stats,
    spectrum_report,
)
from collapsekit.diagnostics.embeddings_io import embeddings_from_object, load_embeddings
from collapsekit.evaluation.extract import (
    Embeddings,
    extract_embeddings,
    pixel_vectors,
    recalibrate_baseline,
)
from collapsekit.progress import Message, ProgressCallback
from collapsekit.runs.checkpoint import safe_torch_load
from collapsekit.runs.models import LoadedModel, ModelOptions, load_model, model_from_object
from collapsekit.serialization import write_json

__all__ = [
    "DataSpec",
    "SimilarityReport",
    "SpectrumReport",
    "embeddings_for",
    "load_eval_volumes",
    "load_input",
    "similarity_analysis",
    "spectrum_analysis",
    "write_similarity_report",
    "write_spectrum_report",
]

_EMBEDDING_SUFFIXES = (".npy", ".npz")
_CHUNK = 16384


@dataclass(frozen=True)
class DataSpec:
    """Which slices models are evaluated on (diagnostics default: a phantom of 48 cases)."""

    dataset: str = "phantom"
    data_dir: str | None = None
    split: str = "all"
    samples: int | None = DIAGNOSTICS_SAMPLES
    image_size: int | None = None
    phantom_cases: int = DIAGNOSTICS_CASES


def _is_embeddings_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in _EMBEDDING_SUFFIXES


def load_input(
    spec: str, device: str | torch.device = "cpu", model_options: ModelOptions | None = None
) -> LoadedModel | np.ndarray:
    """A model, or an ``(N, D)`` array when ``spec`` is an embeddings file (``.pt``: a bare tensor).

    ``model_options``: how to read a foreign checkpoint (:class:`~collapsekit.runs.ModelOptions`).
    """

    if _is_embeddings_file(spec):
        return load_embeddings(spec)
    if Path(spec).suffix.lower() in (".pt", ".pth") and Path(spec).is_file():
        obj = safe_torch_load(spec)  # read once: a tensor is embeddings, a dict is weights
        if isinstance(obj, torch.Tensor):
            return embeddings_from_object(obj, spec)
        return model_from_object(obj, spec, device, options=model_options)
    return load_model(spec, device=device, options=model_options)


def load_eval_volumes(
    data: DataSpec,
    progress: ProgressCallback | None = None,
    *,
    loading: LoadOptions = LoadOptions(),
) -> list[Volume]:
    """Preprocessed volumes of ``data.dataset`` (every case with an image by default).

    The phantom is :func:`~collapsekit.data.spec.eval_phantom` with ``data.phantom_cases`` cases,
    all in its training split (``split="all"`` reads them all either way). ``loading``: the cache
    directory and worker processes (:class:`~collapsekit.data.LoadOptions`).
    """

    phantom = eval_phantom(cases=data.phantom_cases, validation=0)
    return load_split(
        data.dataset, data.data_dir, data.split, phantom=phantom, options=loading, progress=progress
    )


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
    loading: LoadOptions = LoadOptions(),
    progress: ProgressCallback | None = None,
    model_options: ModelOptions | None = None,
) -> list[Embeddings]:
    """Load each input; extract model embeddings over ``data`` (volumes loaded once).

    A random baseline (``random:ARCH``) gets its BatchNorm statistics re-estimated on the volumes
    first (:func:`~collapsekit.evaluation.extract.recalibrate_baseline`) and is named so.

    What a loader assumed about a foreign checkpoint (its stem stride) is reported as a warning
    :class:`~collapsekit.progress.Message`.
    """

    loaded = [(s, load_input(s, device, model_options)) for s in specs]
    window = PreprocessConfig()  # load_eval_volumes' window
    for _, obj in loaded:
        if progress is None or not isinstance(obj, LoadedModel):
            continue
        lines = [*obj.assumptions, obj.window_warning(window.a_min, window.a_max)]
        for line in filter(None, lines):
            progress(Message(line, level="warning"))
    volumes: list[Volume] | None = None
    out: list[Embeddings] = []
    for spec, obj in loaded:
        if isinstance(obj, np.ndarray):
            z = as_embeddings(obj, name=spec, drop_nonfinite=drop_nonfinite).cpu().numpy()
            n = len(z)
            out.append(Embeddings(_name(spec), "file", z, np.zeros(n, dtype=int), np.arange(n), ""))
            continue
        if volumes is None:
            volumes = load_eval_volumes(data, progress, loading=loading)
        size = data.image_size or obj.image_size or 128
        model = recalibrate_baseline(obj, volumes, size, progress)
        emb = extract_embeddings(
            model,
            volumes,
            image_size=size,
            samples=data.samples,
            mode=mode,
            device=device,
            # a random baseline keeps its own name ("random:ARCH (BN recalibrated)")
            name=None if model.kind == "random" else _name(spec),
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
    loading: LoadOptions = LoadOptions(),
    progress: ProgressCallback | None = None,
    model_options: ModelOptions | None = None,
) -> list[SpectrumResult]:
    """Spectrum reports (:class:`~collapsekit.diagnostics.SpectrumResult`) of every input, each
    with the pooling rule that made its rows (empty for an embeddings file)."""

    results = []
    for emb in embeddings_for(
        specs,
        data,
        mode=mode,
        device=device,
        drop_nonfinite=drop_nonfinite,
        loading=loading,
        progress=progress,
        model_options=model_options,
    ):
        name = emb.name if mode == "backbone" or emb.mode == "file" else f"{emb.name} [{mode}]"
        if len(emb.z) > _CHUNK:
            acc = SpectrumAccumulator(emb.z.shape[1], normalize=normalize, name=name)
            for i in range(0, len(emb.z), _CHUNK):
                acc.update(emb.z[i : i + _CHUNK])
            result = acc.compute()
        else:
            result = spectrum_report(emb.z, name=name, normalize=normalize)
        results.append(replace(result, pooling=emb.pooling))
    return results


def similarity_analysis(
    specs: Sequence[str],
    data: DataSpec = DataSpec(),
    *,
    pixels: bool = False,
    mode: str = "backbone",
    device: str | torch.device = "cpu",
    drop_nonfinite: bool = False,
    loading: LoadOptions = LoadOptions(),
    progress: ProgressCallback | None = None,
    model_options: ModelOptions | None = None,
) -> list[SimilarityResult]:
    """Inter-image cosine similarity of each input's embeddings (and of the pixels with ``pixels``)."""

    results = []
    embs = embeddings_for(
        specs,
        data,
        mode=mode,
        device=device,
        drop_nonfinite=drop_nonfinite,
        loading=loading,
        progress=progress,
        model_options=model_options,
    )
    for emb in embs:
        groups = emb.volume if emb.mode != "file" else None
        results.append(pairwise_cosine_stats(emb.z, groups=groups, name=emb.name))
    if pixels:
        volumes = load_eval_volumes(data, progress, loading=loading)
        x, vol = pixel_vectors(volumes, data.samples, size=64)
        results.insert(0, pairwise_cosine_stats(x, groups=vol, name="pixels (64x64)"))
    return results


@dataclass(frozen=True)
class SpectrumReport:
    """What :func:`write_spectrum_report` computed and where it wrote it.

    Attributes:
        mode: ``backbone``, ``head`` or ``dense`` (see :func:`~collapsekit.evaluation.extract.extract_embeddings`).
        normalized: whether rows were L2-normalised before the spectrum.
        results: one :class:`~collapsekit.diagnostics.SpectrumResult` per input, in order.
        json_path, figure_path: ``spectrum.json`` (:meth:`to_dict`) and ``spectrum.png``.
    """

    mode: str
    normalized: bool
    results: list[SpectrumResult]
    json_path: Path
    figure_path: Path

    def to_dict(self) -> dict[str, Any]:
        """The content of ``spectrum.json``: ``{"mode", "normalized", "results"}``."""
        return {
            "mode": self.mode,
            "normalized": self.normalized,
            "results": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True)
class SimilarityReport:
    """What :func:`write_similarity_report` computed and where it wrote it.

    Attributes:
        results: one :class:`~collapsekit.diagnostics.SimilarityResult` per input (the pixels
            first, when asked for).
        json_path, figure_path: ``similarity.json`` (:meth:`to_dict`) and ``similarity.png``.
    """

    results: list[SimilarityResult]
    json_path: Path
    figure_path: Path

    def to_dict(self) -> dict[str, Any]:
        """The content of ``similarity.json``: ``{"results"}``."""
        return {"results": [r.to_dict() for r in self.results]}


def _outputs(
    specs: Sequence[str], out: str | Path | None, stem: str, overwrite: bool, figure_format: str
) -> tuple[Path, Path]:
    """The output directory and figure path, checked before any work: writable, and
    ``<stem>.<format>``/``<stem>.json`` there are not replaced unless ``overwrite`` (they may be
    another run's results). Default directory: ``RUN/diagnostics`` for one run, else
    ``./diagnostics``."""
    from collapsekit.options import look_up_option
    from collapsekit.outputs import check_writable_dir, refuse_overwrite
    from collapsekit.plotting import FIGURE_FORMATS
    from collapsekit.runs.rundir import diagnostics_dir

    fmt = look_up_option(figure_format.lower(), FIGURE_FORMATS, "--format")
    directory = Path(out) if out is not None else diagnostics_dir(list(specs))
    check_writable_dir(directory, "--out")
    figure = directory / f"{stem}.{fmt}"
    refuse_overwrite([figure, directory / f"{stem}.json"], overwrite=overwrite)
    return directory, figure


def _write(payload: Any, fig: Any, json_path: Path, figure_path: Path) -> None:
    """``json_path`` then ``figure_path``; a failed write is an OutputError saying what was kept."""
    from collapsekit.outputs import writing
    from collapsekit.plotting import save_figure

    with writing(json_path, "nothing was written"):
        write_json(payload, json_path)
    with writing(figure_path, f"{json_path} was written"):
        save_figure(fig, figure_path)


def write_spectrum_report(
    specs: Sequence[str],
    out: str | Path | None = None,
    data: DataSpec = DataSpec(),
    *,
    mode: str = "backbone",
    normalize: bool = True,
    device: str | torch.device = "cpu",
    drop_nonfinite: bool = False,
    overwrite: bool = False,
    loading: LoadOptions = LoadOptions(),
    progress: ProgressCallback | None = None,
    model_options: ModelOptions | None = None,
    figure_format: str = "png",
) -> SpectrumReport:
    """:func:`spectrum_analysis` of every input, written to ``out/spectrum.json`` and
    ``out/spectrum.png`` (``collapsekit spectrum``).

    Args:
        specs, data, mode, normalize, device, drop_nonfinite, loading, progress, model_options:
            as in :func:`spectrum_analysis`.
        out: the output directory (default ``RUN/diagnostics`` for one run, else
            ``./diagnostics``); checked before any work.
        overwrite: replace ``spectrum.json`` and the figure if they exist there already.
        figure_format: ``png``, ``pdf`` or ``svg``.

    Raises:
        OutputError: ``out`` is not writable, its files exist (without ``overwrite``), or a write
            failed (the message says what was kept).
    """
    from collapsekit.plotting import plot_spectrum

    directory, figure = _outputs(specs, out, "spectrum", overwrite, figure_format)
    results = spectrum_analysis(
        specs,
        data,
        mode=mode,
        normalize=normalize,
        device=device,
        drop_nonfinite=drop_nonfinite,
        loading=loading,
        progress=progress,
        model_options=model_options,
    )
    report = SpectrumReport(mode, normalize, results, directory / "spectrum.json", figure)
    fig, _ = plot_spectrum(results, title=f"Embedding spectrum ({mode})")
    _write(report.to_dict(), fig, report.json_path, report.figure_path)
    return report


def write_similarity_report(
    specs: Sequence[str],
    out: str | Path | None = None,
    data: DataSpec = DataSpec(),
    *,
    pixels: bool = False,
    device: str | torch.device = "cpu",
    drop_nonfinite: bool = False,
    overwrite: bool = False,
    loading: LoadOptions = LoadOptions(),
    progress: ProgressCallback | None = None,
    model_options: ModelOptions | None = None,
    figure_format: str = "png",
) -> SimilarityReport:
    """:func:`similarity_analysis` of every input, written to ``out/similarity.json`` and
    ``out/similarity.png`` (``collapsekit similarity``); ``out`` and ``overwrite`` as in
    :func:`write_spectrum_report`."""
    from collapsekit.plotting import plot_similarity

    directory, figure = _outputs(specs, out, "similarity", overwrite, figure_format)
    results = similarity_analysis(
        specs,
        data,
        pixels=pixels,
        device=device,
        drop_nonfinite=drop_nonfinite,
        loading=loading,
        progress=progress,
        model_options=model_options,
    )
    report = SimilarityReport(results, directory / "similarity.json", figure)
    fig, _ = plot_similarity(results)
    _write(report.to_dict(), fig, report.json_path, report.figure_path)
    return report
