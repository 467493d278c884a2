"""Typer options shared by several commands, each declared once with one help text.

A command that needs another default or a narrower set of choices declares its own option next
to it; the ones here mean the same thing wherever they appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "CacheDirOpt",
    "DataDirOpt",
    "DatasetOpt",
    "DeviceOpt",
    "EvalDatasetOpt",
    "ImageSizeOpt",
    "JsonOpt",
    "OverwriteOpt",
    "PreprocessWorkersOpt",
    "QuietOpt",
]

#: ``--dataset`` of the commands that read any dataset (``spectrum``, ``similarity``, ``data check``).
DatasetOpt = Annotated[
    str, typer.Option("--dataset", "-d", help="phantom | btcv | abdomenct1k | folder.")
]
#: ``--dataset`` of the segmentation evaluation (it needs BTCV's organ labels).
EvalDatasetOpt = Annotated[
    str, typer.Option("--dataset", help="phantom (built in) | btcv (needs --data-dir).")
]
#: ``--data-dir``: the dataset on disk (``readable=False``: the layout check says what is wrong).
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", readable=False, help="Dataset root on disk (not needed for the phantom)."
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the JSON result to stdout and nothing else.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace the output files if they already exist."),
]
ImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        min=32,
        help="Slice size fed to models (default: the checkpoint's, else 128).",
    ),
]
#: ``--preprocess-workers`` of every command that loads volumes (``--workers`` of ``train`` is
#: the DataLoader's).
PreprocessWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--preprocess-workers",
        min=0,
        help="Processes that read and preprocess volumes (default: all cores, shared by the "
        "local torchrun ranks; 0: in this process).",
    ),
]
#: ``--cache-dir``: the memory-mapped preprocessed-volume cache (also ``$COLLAPSEKIT_CACHE_DIR``).
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        envvar="COLLAPSEKIT_CACHE_DIR",
        help="Directory of the on-disk cache of preprocessed volumes (float16, memory-mapped: "
        "memory stays bounded for any number of volumes). Default: in memory only.",
    ),
]
