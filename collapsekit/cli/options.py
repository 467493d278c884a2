"""Typer options shared by several commands, each declared once with one help text.

A command that needs another default or a narrower set of choices declares its own option next
to it; the ones here mean the same thing wherever they appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "ArchOpt",
    "ModelKwargsOpt",
    "StateDictKeyOpt",
    "StemStrideOpt",
    "StripPrefixOpt",
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


# ----------------------------------------------------------------------------------------------
# How to read a foreign checkpoint: the options of every command that takes a model (issue 19).
# Declared once here; each command passes them to cli.common.model_options() and on to the library.
_FOREIGN = "Foreign checkpoints"

StateDictKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--state-dict-key",
        help="Entry of the checkpoint that holds the weights, dotted when nested (state_dict, "
        "model.ema). Default: state_dict, model, backbone, ... or the file itself.",
        rich_help_panel=_FOREIGN,
    ),
]
StripPrefixOpt = Annotated[
    str | None,
    typer.Option(
        "--strip-prefix",
        help="Prefix in front of conv1/layer1 in the weight names (backbone., "
        "module.encoder_q.). Default: found from the names.",
        rich_help_panel=_FOREIGN,
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="resnet18 | resnet34 | resnet50 (default: from the blocks per stage).",
        rich_help_panel=_FOREIGN,
    ),
]
StemStrideOpt = Annotated[
    int | None,
    typer.Option(
        "--stem-stride",
        min=1,
        help="Stride of the stem convolution, which weights cannot show (MONAI's default 1, "
        "torchvision/timm 2). Default: the file's metadata, else assumed with a warning.",
        rich_help_panel=_FOREIGN,
    ),
]
ModelKwargsOpt = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        help='MONAI ResNet settings the weights cannot show, as JSON: {"conv1_t_stride": 1, '
        '"no_max_pool": false}.',
        rich_help_panel=_FOREIGN,
    ),
]
