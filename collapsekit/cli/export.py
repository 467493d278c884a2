"""``collapsekit export``: a run's query backbone as a plain MONAI/torchvision ResNet state dict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from collapsekit.cli.app import app
from collapsekit.cli.common import console, err_console, handle_errors, model_options, print_json
from collapsekit.cli.options import (
    ArchOpt,
    JsonOpt,
    ModelKwargsOpt,
    StateDictKeyOpt,
    StemStrideOpt,
    StripPrefixOpt,
)


@app.command()
@handle_errors
def export(
    run: Annotated[
        str,
        typer.Argument(
            help="Run directory or checkpoint (also official MoCo / torchvision checkpoints).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Argument(help="The .pt file to write.", show_default=False)],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="monai: 1-channel stem, loads into monai.networks.nets.resnetXX(spatial_dims=2, "
            "n_input_channels=1, ...); torchvision: 3-channel stem (w/3 per RGB channel), loads "
            "into a torchvision ResNet whose fc is nn.Identity().",
        ),
    ] = "monai",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it already exists.")
    ] = False,
    json_out: JsonOpt = False,
    arch: ArchOpt = None,
    state_dict_key: StateDictKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    stem_stride: StemStrideOpt = None,
    model_kwargs: ModelKwargsOpt = None,
) -> None:
    """Write the pretrained backbone alone (no projector, heads, queues or optimiser).

    A ZCA layer inside the last block (the default placement) is folded into the convolution
    before it and a BatchNorm, so the file is a plain ResNet with the run's eval-mode features.
    """
    from collapsekit.runs.export import export_backbone

    opts = model_options(arch, state_dict_key, strip_prefix, stem_stride, model_kwargs)
    result = export_backbone(run, out, fmt=fmt, overwrite=overwrite, options=opts)
    for line in result.assumptions:
        err_console.print(
            f"warning: {line}", style="yellow", highlight=False, markup=False, soft_wrap=True
        )
    if json_out:
        print_json(result.to_dict())
        return
    mb = result.size_bytes / 1e6
    console.print(
        f"wrote {result.path} ({mb:.1f} MB, {result.format} format): {result.arch} backbone of "
        f"{result.source}, {result.num_parameters:,} parameters, {result.in_channels}-channel stem",
        highlight=False,
    )
    if result.zca_folded:
        console.print(
            "the ZCA layer of the last block was folded into its convolution and a BatchNorm "
            "(same eval-mode features; an ordinary BatchNorm when fine-tuned)",
            highlight=False,
        )
    if result.format == "monai":
        args = ", ".join(f"{k}={v!r}" for k, v in result.monai_kwargs.items())
        console.print(
            f"load it: monai.networks.nets.{result.arch}({args}).load_state_dict("
            f"torch.load({str(result.path)!r}, weights_only=True))",
            highlight=False,
            soft_wrap=True,
        )
    if result.image_size is not None:
        console.print(
            f"trained at {result.image_size} px; the file records it with the stem and HU window, "
            f"so `collapsekit spectrum {result.path}` reads them back",
            highlight=False,
        )
