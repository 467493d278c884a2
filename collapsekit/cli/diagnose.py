"""``collapsekit spectrum`` and ``collapsekit similarity``: collapse diagnostics of any model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from collapsekit.cli.app import app
from collapsekit.cli.common import (
    CacheDirOpt,
    PreprocessWorkersOpt,
    console,
    data_loading,
    handle_errors,
    print_json,
    rich_progress,
)
from collapsekit.outputs import writing

InputsArg = Annotated[
    list[str],
    typer.Argument(
        help="Checkpoints, run directories, embeddings files (.npy/.npz/.pt tensor) or random:ARCH.",
        show_default=False,
    ),
]
DatasetOpt = Annotated[str, typer.Option(help="phantom | btcv | abdomenct1k | folder")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", readable=False, help="Dataset root on disk.")
]
SamplesOpt = Annotated[int, typer.Option(min=2, help="Slices to embed (evenly spaced).")]
ImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        min=32,
        help="Slice size fed to models (default: the checkpoint's, else 128).",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu | cuda | auto")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the JSON result to stdout and nothing else.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace the output files if they already exist in --out."),
]
DropOpt = Annotated[
    bool, typer.Option("--drop-nonfinite", help="Drop rows with NaN/inf instead of failing.")
]
FormatOpt = Annotated[str, typer.Option("--format", help="Figure format: png | pdf | svg.")]


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
        typer.Option(
            help="Where spectrum.png and spectrum.json go.",
            show_default="RUN/diagnostics for one run, else ./diagnostics",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    drop_nonfinite: DropOpt = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = "png",
) -> None:
    """Singular spectrum, effective rank, α-ReQ and friends of embeddings (Jing et al. 2022)."""
    from collapsekit.devices import resolve_device
    from collapsekit.errors import ConfigError
    from collapsekit.evaluation.report import DataSpec, spectrum_analysis
    from collapsekit.plotting import plot_spectrum, save_figure
    from collapsekit.serialization import write_json

    if dense and head:
        raise ConfigError("--dense and --head are exclusive")
    mode = "dense" if dense else "head" if head else "backbone"
    out = _out_dir(out, inputs)
    figure = out / f"spectrum.{_figure_format(fmt)}"
    _check_outputs(out, "spectrum", overwrite, figure)
    data = DataSpec(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        samples=samples,
        image_size=image_size,
    )
    with rich_progress(quiet or json_out) as progress, data_loading(preprocess_workers, cache_dir):
        results = spectrum_analysis(
            inputs,
            data,
            mode=mode,
            normalize=normalize,
            device=resolve_device(device),
            drop_nonfinite=drop_nonfinite,
            progress=progress,
        )
    payload = {"mode": mode, "normalized": normalize, "results": [r.to_dict() for r in results]}
    with writing(out / "spectrum.json", "nothing was written"):
        write_json(payload, out / "spectrum.json")
    fig, _ = plot_spectrum(results, title=f"Embedding spectrum ({mode})")
    with writing(figure, f"{out / 'spectrum.json'} was written"):
        save_figure(fig, figure)
    if json_out:
        print_json(payload)
        return
    suffix = ", L2-normalised" if normalize else ""
    table = Table(title=f"Embedding spectrum ({mode}{suffix})", box=box.SIMPLE_HEAD)
    for col in (
        "input",
        "N×D",
        "effective\nrank (λ)",
        "effective\nrank (σ)",
        "RankMe\n(σ, raw)",
        "α (R²)",
        "std L2",
        "top1/10%",
        "rank",
    ):
        if col == "input":
            table.add_column(col, min_width=12, overflow="fold")
        else:
            table.add_column(col, justify="right", no_wrap=True)
    notes = []
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
        if r.d > r.n - 1:
            notes.append(
                f"{r.name}: D={r.d} > N-1={r.n - 1}, so every rank is bounded by N-1 = {r.n - 1}"
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
    for n in notes:
        console.print(f"[yellow]note:[/] {n}")
    console.print(
        "std L2 ≈ 1/√D for healthy embeddings, → 0 when collapsed "
        f"(1/√D = {1 / results[0].d ** 0.5:.4f} for D={results[0].d})."
    )
    console.print(f"wrote {figure} and {out / 'spectrum.json'}")


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
            help="Where similarity.png and similarity.json go.",
            show_default="RUN/diagnostics for one run, else ./diagnostics",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    drop_nonfinite: DropOpt = False,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    fmt: FormatOpt = "png",
) -> None:
    """Inter-image cosine similarity of embeddings (same vs different volume) and of pixels."""
    from collapsekit.devices import resolve_device
    from collapsekit.evaluation.report import DataSpec, similarity_analysis
    from collapsekit.glossary import label
    from collapsekit.plotting import plot_similarity, save_figure
    from collapsekit.serialization import write_json

    out = _out_dir(out, inputs)
    figure = out / f"similarity.{_figure_format(fmt)}"
    _check_outputs(out, "similarity", overwrite, figure)
    data = DataSpec(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        samples=samples,
        image_size=image_size,
    )
    with rich_progress(quiet or json_out) as progress, data_loading(preprocess_workers, cache_dir):
        results = similarity_analysis(
            inputs,
            data,
            pixels=pixels,
            device=resolve_device(device),
            drop_nonfinite=drop_nonfinite,
            progress=progress,
        )
    payload = {"results": [r.to_dict() for r in results]}
    with writing(out / "similarity.json", "nothing was written"):
        write_json(payload, out / "similarity.json")
    fig, _ = plot_similarity(results)
    with writing(figure, f"{out / 'similarity.json'} was written"):
        save_figure(fig, figure)
    if json_out:
        print_json(payload)
        return
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
    for r in results:
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
    console.print(f"wrote {figure} and {out / 'similarity.json'}")


def _out_dir(out: Path | None, inputs: list[str]) -> Path:
    from collapsekit.runs.rundir import diagnostics_dir

    return out if out is not None else diagnostics_dir(inputs)


def _figure_format(fmt: str) -> str:
    from collapsekit.options import look_up_option
    from collapsekit.plotting import FIGURE_FORMATS

    return look_up_option(fmt.lower(), FIGURE_FORMATS, "--format")


def _check_outputs(out: Path, stem: str, overwrite: bool, figure: Path) -> None:
    """Before any work: ``out`` is writable and the figure and ``<stem>.json`` there are not
    replaced unless ``--overwrite`` (they may be another run's results)."""
    from collapsekit.outputs import check_writable_dir, refuse_overwrite

    check_writable_dir(out, "--out")
    refuse_overwrite([figure, out / f"{stem}.json"], overwrite=overwrite)
