"""``collapsekit spectrum`` and ``collapsekit similarity``: collapse diagnostics of any model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from collapsekit.cli.app import app
from collapsekit.cli.common import (
    console,
    handle_errors,
    load_options,
    model_options,
    print_json,
    rich_progress,
)
from collapsekit.cli.options import (
    ArchOpt,
    CacheDirOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    ModelKwargsOpt,
    OverwriteOpt,
    PreprocessWorkersOpt,
    QuietOpt,
    StateDictKeyOpt,
    StemStrideOpt,
    StripPrefixOpt,
)

if TYPE_CHECKING:
    from collapsekit.evaluation.report import DataSpec, SimilarityReport, SpectrumReport

InputsArg = Annotated[
    list[str],
    typer.Argument(
        help="Checkpoints, run directories, embeddings files (.npy/.npz/.pt tensor) or random:ARCH.",
        show_default=False,
    ),
]
SamplesOpt = Annotated[int, typer.Option(min=2, help="Slices to embed (evenly spaced).")]
DropOpt = Annotated[
    bool, typer.Option("--drop-nonfinite", help="Drop rows with NaN/inf instead of failing.")
]
_OUT_DEFAULT = "RUN/diagnostics for one run, else ./diagnostics"
FormatOpt = Annotated[str, typer.Option("--format", help="Figure format: png | pdf | svg.")]


def _data(dataset: str, data_dir: Path | None, samples: int, image_size: int | None) -> DataSpec:
    from collapsekit.evaluation.report import DataSpec

    return DataSpec(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        samples=samples,
        image_size=image_size,
    )


@app.command()
@handle_errors
def spectrum(
    inputs: InputsArg,
    dataset: DatasetOpt = "phantom",
    data_dir: DataDirOpt = None,
    samples: SamplesOpt = 2048,
    dense: Annotated[
        bool, typer.Option("--dense", help="Per-location features of the final map.")
    ] = False,
    head: Annotated[
        bool, typer.Option("--head", help="Projector output instead of the backbone.")
    ] = False,
    normalize: Annotated[
        bool, typer.Option("--normalize/--no-normalize", help="L2-normalise rows first.")
    ] = True,
    image_size: ImageSizeOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Where spectrum.png and spectrum.json go.", show_default=_OUT_DEFAULT),
    ] = None,
    device: DeviceOpt = "auto",
    drop_nonfinite: DropOpt = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    arch: ArchOpt = None,
    state_dict_key: StateDictKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    stem_stride: StemStrideOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    fmt: FormatOpt = "png",
) -> None:
    """Singular spectrum, effective rank, α-ReQ and friends of embeddings (Jing et al. 2022)."""
    from collapsekit.devices import resolve_device
    from collapsekit.errors import ConfigError
    from collapsekit.evaluation.report import write_spectrum_report

    if dense and head:
        raise ConfigError("--dense and --head are exclusive")
    with rich_progress(quiet or json_out) as progress:
        report = write_spectrum_report(
            inputs,
            out,
            _data(dataset, data_dir, samples, image_size),
            mode="dense" if dense else "head" if head else "backbone",
            model_options=model_options(
                arch, state_dict_key, strip_prefix, stem_stride, model_kwargs
            ),
            normalize=normalize,
            device=resolve_device(device),
            drop_nonfinite=drop_nonfinite,
            overwrite=overwrite,
            loading=load_options(cache_dir, preprocess_workers),
            progress=progress,
            figure_format=fmt,
        )
    if json_out:
        print_json(report.to_dict())
    else:
        _render_spectrum(report, samples, dataset)


_SPECTRUM_COLUMNS = (
    "N×D",
    "effective\nrank (λ)",
    "effective\nrank (σ)",
    "RankMe\n(σ, raw)",
    "α (R²)",
    "std L2",
    "top1/10%",
    "rank",
)


def _render_spectrum(report: SpectrumReport, samples: int, dataset: str) -> None:
    results = report.results
    normalize = report.normalized
    suffix = ", L2-normalised" if normalize else ""
    table = Table(title=f"Embedding spectrum ({report.mode}{suffix})", box=box.SIMPLE_HEAD)
    table.add_column("input", min_width=12, overflow="fold")
    for col in _SPECTRUM_COLUMNS:
        table.add_column(col, justify="right", no_wrap=True)
    for r in results:
        table.add_row(
            r.name,
            f"{r.n}×{r.d}",
            f"{r.effective_rank_lambda:.1f}",
            f"{r.effective_rank_sigma:.1f}",
            f"{r.rankme:.1f}",
            f"{r.alpha:.2f} ({r.alpha_r2:.2f})",
            f"{r.std_l2:.4f}",
            f"{100 * r.top1_variance:.1f}/{100 * r.top10_variance:.1f}",
            f"{r.numerical_rank}/{r.rank_bound}",
        )
    console.print(table)
    console.print(
        "Every rank is measured on the N rows shown"
        + (", each L2-normalised" if normalize else ", not normalised")
        + f" (a model's rows: {samples} evenly spaced {dataset} slices; a file's: its rows)"
        + ". effective rank (λ): of the covariance eigenvalues (shows collapse); (σ): of the "
        "singular values of the centred embeddings; RankMe: of the raw matrix; "
        "rank: numerical rank / its bound min(D, N-1); top1/10%: variance in the leading directions.",
        style="dim",
    )
    for r in results:
        if r.pooling:
            console.print(f"{r.name}: rows pooled by {r.pooling}", style="dim")
    for r in results:
        if r.d > r.n - 1:
            console.print(
                f"[yellow]note:[/] {r.name}: D={r.d} > N-1={r.n - 1}, so every rank is bounded "
                f"by N-1 = {r.n - 1}"
            )
    console.print(
        "std L2 ≈ 1/√D for healthy embeddings, → 0 when collapsed "
        f"(1/√D = {1 / results[0].d ** 0.5:.4f} for D={results[0].d})."
    )
    console.print(f"wrote {report.figure_path} and {report.json_path}")


@app.command()
@handle_errors
def similarity(
    inputs: InputsArg,
    pixels: Annotated[
        bool, typer.Option("--pixels", help="Also the cosine similarity of the slices' pixels.")
    ] = False,
    dataset: DatasetOpt = "phantom",
    data_dir: DataDirOpt = None,
    samples: SamplesOpt = 2048,
    image_size: ImageSizeOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where similarity.png and similarity.json go.", show_default=_OUT_DEFAULT
        ),
    ] = None,
    device: DeviceOpt = "auto",
    drop_nonfinite: DropOpt = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    arch: ArchOpt = None,
    state_dict_key: StateDictKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    stem_stride: StemStrideOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    fmt: FormatOpt = "png",
) -> None:
    """Inter-image cosine similarity of embeddings (same vs different volume) and of pixels."""
    from collapsekit.devices import resolve_device
    from collapsekit.evaluation.report import write_similarity_report

    with rich_progress(quiet or json_out) as progress:
        report = write_similarity_report(
            inputs,
            out,
            _data(dataset, data_dir, samples, image_size),
            model_options=model_options(
                arch, state_dict_key, strip_prefix, stem_stride, model_kwargs
            ),
            pixels=pixels,
            device=resolve_device(device),
            drop_nonfinite=drop_nonfinite,
            overwrite=overwrite,
            loading=load_options(cache_dir, preprocess_workers),
            progress=progress,
            figure_format=fmt,
        )
    if json_out:
        print_json(report.to_dict())
    else:
        _render_similarity(report)


def _render_similarity(report: SimilarityReport) -> None:
    from collapsekit.glossary import label

    table = Table(title="Inter-image cosine similarity")
    for col in (
        "input",
        "pairs",
        label("mean_cosine"),
        label("std_cosine"),
        "median",
        "q05",
        "q95",
        "same volume",
        "different volume",
    ):
        table.add_column(col, justify="left" if col == "input" else "right")
    for r in report.results:
        d = r.to_dict()
        same = d.get("same_volume") or {}
        diff = d.get("different_volume") or {}
        q = d["quantiles"]
        table.add_row(
            r.name,
            str(r.n_pairs),
            f"{r.mean_cosine:.3f}",
            f"{r.std_cosine:.3f}",
            f"{q.get('q50', float('nan')):.3f}",
            f"{q.get('q05', float('nan')):.3f}",
            f"{q.get('q95', float('nan')):.3f}",
            f"{same['mean_cosine']:.3f}" if same else "-",
            f"{diff['mean_cosine']:.3f}" if diff else "-",
        )
    console.print(table)
    console.print(f"wrote {report.figure_path} and {report.json_path}")
