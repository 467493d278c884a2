"""``collapsekit data``: write the phantom to disk and check datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from collapsekit.cli.app import App, app
from collapsekit.cli.common import (
    console,
    err_console,
    handle_errors,
    load_options,
    print_json,
    rich_progress,
)
from collapsekit.cli.options import (
    CacheDirOpt,
    DataDirOpt,
    DatasetOpt,
    JsonOpt,
    PreprocessWorkersOpt,
    QuietOpt,
)

__all__ = ["data_app"]

data_app = App(
    no_args_is_help=True, help="CT datasets: write the built-in phantom, check a dataset."
)
app.add_typer(
    data_app, name="data", help="CT datasets: write the built-in phantom, check a dataset."
)


@data_app.command("phantom")
@handle_errors
def phantom_cmd(
    out_dir: Annotated[
        Path,
        typer.Argument(
            help="Directory to write the dataset into (must be empty unless --overwrite)."
        ),
    ],
    cases: Annotated[int, typer.Option("--cases", min=1, help="Number of volumes.")] = 12,
    layout: Annotated[
        str, typer.Option("--layout", help="On-disk layout: btcv or abdomenct1k.")
    ] = "btcv",
    size: Annotated[
        int, typer.Option("--size", min=8, help="In-plane size in pixels (400 mm field of view).")
    ] = 128,
    slices: Annotated[
        int, typer.Option("--slices", min=1, help="Axial slices per volume (150 mm).")
    ] = 48,
    seed: Annotated[int, typer.Option("--seed", help="Dataset seed.")] = 0,
    validation: Annotated[
        int | None,
        typer.Option(
            "--validation",
            min=0,
            help="Cases listed as validation (btcv layout); default: a third of the cases, at least 1, at most 4.",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Write into a non-empty directory (replaces only the phantom's files).",
        ),
    ] = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write phantom CT volumes (int16 HU) and BTCV-id label maps in a real dataset layout."""
    from collapsekit.data.phantom import write_phantom_dataset
    from collapsekit.outputs import check_writable_dir

    check_writable_dir(out_dir, "output directory")
    with rich_progress(quiet or json_out) as progress:
        index = write_phantom_dataset(
            out_dir,
            cases=cases,
            layout=layout,
            size=size,
            slices=slices,
            seed=seed,
            validation=validation,
            overwrite=overwrite,
            progress=progress,
        )
    counts = index.counts()
    if json_out:
        print_json({"dataset": index.dataset, "root": index.root, "volumes": counts})
        return
    console.print(
        f"wrote {sum(counts.values())} phantom cases ({index.dataset} layout) to {index.root}: "
        f"{counts['training']} training, {counts['validation']} validation",
        highlight=False,
    )
    console.print(
        f"check it with: collapsekit data check --dataset {index.dataset} --data-dir {index.root}",
        highlight=False,
    )


@data_app.command("check")
@handle_errors
def check_cmd(
    dataset: DatasetOpt = "phantom",
    data_dir: DataDirOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Validate a dataset and print volumes per split, usable slices, label ids, spacing and shapes
    (and, for DICOM series in a folder, their count, slices and spacing)."""
    from collapsekit.data.labels import ABDOMENCT1K_LABELS, BTCV_LABELS
    from collapsekit.data.validate import check_dataset

    loading = load_options(cache_dir, preprocess_workers)
    with rich_progress(quiet or json_out) as progress:
        report = check_dataset(dataset, data_dir, progress=progress, options=loading)
    if json_out:
        print_json(report)
        return
    table = Table(
        title=f"{report['dataset']}" + (f"  ({report['root']})" if report["root"] else "")
    )
    table.add_column("split")
    table.add_column("volumes", justify="right")
    table.add_column("usable slices", justify="right")
    for split in ("training", "validation", "test"):
        table.add_row(split, str(report["volumes"][split]), str(report["slices"][split]))
    table.add_row(
        "total", str(sum(report["volumes"].values())), str(report["slices"]["total"]), style="bold"
    )
    console.print(table)
    names = ABDOMENCT1K_LABELS if report["dataset"] == "abdomenct1k" else BTCV_LABELS
    labels = ", ".join(f"{i} {names.get(i, '?')}" for i in report["labels"]) or "none"
    console.print(f"labels: {labels}", highlight=False)
    sp, sh = report["spacing"], report["shape"]
    console.print(f"spacing (mm): {sp['min']} .. {sp['max']}", highlight=False)
    console.print(f"shape: {sh['min']} .. {sh['max']}", highlight=False)
    seg = report.get("segmentation")
    if seg is not None:
        if seg["usable"]:
            console.print("probe / finetune: usable", highlight=False)
        else:
            console.print(f"[yellow]probe / finetune: not usable:[/] {escape(seg['reason'])}")
    dcm = report["dicom"]
    if dcm["series"]:
        console.print(
            f"DICOM: {dcm['series']} series, {dcm['slices']} slices, spacing (mm) "
            f"{dcm['spacing']['min']} .. {dcm['spacing']['max']}",
            highlight=False,
        )
    for warning in report["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
