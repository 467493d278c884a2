"""``collapsekit probe`` and ``collapsekit finetune``: segmentation quality as per-organ 3D Dice."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
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
    DeviceOpt,
    EvalDatasetOpt,
    ImageSizeOpt,
    JsonOpt,
    ModelKwargsOpt,
    PreprocessWorkersOpt,
    QuietOpt,
    StateDictKeyOpt,
    StemStrideOpt,
    StripPrefixOpt,
)

if TYPE_CHECKING:
    from collapsekit.data import LoadOptions
    from collapsekit.data.volume import Volume
    from collapsekit.evaluation.segmentation.scoring import SegmentationResult
    from collapsekit.progress import ProgressCallback
    from collapsekit.runs.models import LoadedModel, ModelOptions

CheckpointsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Checkpoints, run directories, foreign checkpoints or random:ARCH "
        "(default: runs/latest).",
        show_default=False,
    ),
]
EpochsOpt = Annotated[int, typer.Option(min=1, help="Epochs over the training slices.")]
FractionOpt = Annotated[
    float,
    typer.Option(
        "--label-fraction",
        min=0.0,
        max=1.0,
        help="Fraction of labelled training volumes.",
    ),
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Slices per step.")]
LrOpt = Annotated[
    float | None,
    typer.Option(min=0.0, help="Learning rate (default: the method's)."),
]
SavePredOpt = Annotated[
    Path | None,
    typer.Option(
        "--save-predictions", help="Write <case>_pred.nii.gz label maps here (per checkpoint)."
    ),
]
SeedOpt = Annotated[int, typer.Option(help="Seed of the subset, shuffling and head init.")]
PhantomCasesOpt = Annotated[
    int,
    typer.Option(
        "--phantom-cases", min=2, help="Phantom volumes (a third for validation, at most 4)."
    ),
]
PhantomSizeOpt = Annotated[
    int, typer.Option("--phantom-size", min=8, help="Phantom in-plane size.")
]
PhantomSlicesOpt = Annotated[int, typer.Option("--phantom-slices", min=1, help="Phantom slices.")]


@app.command()
@handle_errors
def probe(
    checkpoints: CheckpointsArg = None,
    dataset: EvalDatasetOpt = "phantom",
    data_dir: DataDirOpt = None,
    epochs: EpochsOpt = 20,
    image_size: ImageSizeOpt = None,
    output_stride: Annotated[
        int, typer.Option("--output-stride", help="8 | 16 | 32 (below 32: dilated last stages).")
    ] = 32,
    label_fraction: FractionOpt = 1.0,
    dice_loss: Annotated[
        bool, typer.Option("--dice-loss", help="Add a soft Dice loss to the cross-entropy.")
    ] = False,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    cache: Annotated[str, typer.Option(help="Feature cache: memory | disk | none.")] = "memory",
    save_predictions: SavePredOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    phantom_cases: PhantomCasesOpt = 12,
    phantom_size: PhantomSizeOpt = 128,
    phantom_slices: PhantomSlicesOpt = 48,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    arch: ArchOpt = None,
    state_dict_key: StateDictKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    stem_stride: StemStrideOpt = None,
    model_kwargs: ModelKwargsOpt = None,
) -> None:
    """Linear probe (1×1 conv on the frozen final feature map) scored by per-organ 3D Dice."""
    from collapsekit.devices import resolve_device
    from collapsekit.evaluation.extract import recalibrate_baseline
    from collapsekit.evaluation.segmentation.probe import ProbeConfig, linear_probe

    specs = _specs(checkpoints)
    _check_specs(specs, "probe")
    opts = model_options(arch, state_dict_key, strip_prefix, stem_stride, model_kwargs)
    _check_predictions_dir(save_predictions)
    dev = resolve_device(device)
    results: list[SegmentationResult] = []
    loading = load_options(cache_dir, preprocess_workers)
    with rich_progress(quiet or json_out) as progress:
        train, val, labels = _load_data(
            dataset, data_dir, (phantom_cases, phantom_size, phantom_slices), loading, progress
        )
        for spec in specs:
            model = _load(spec, dev, opts, progress)
            cfg = ProbeConfig(
                epochs=epochs,
                image_size=_image_size(model, image_size, progress),
                output_stride=output_stride,
                dice_loss=dice_loss,
                label_fraction=label_fraction,
                seed=seed,
                cache=cache,
                **_given(batch_size=batch_size, lr=lr),
            )
            model = recalibrate_baseline(model, train, cfg.image_size, progress)
            results.append(
                linear_probe(
                    model.backbone,
                    train,
                    val,
                    labels,
                    cfg,
                    name=model.name,
                    device=dev,
                    progress=progress,
                    save_predictions=_pred_dir(save_predictions, model.name, len(specs)),
                )
            )
    _render(results, "Linear probe", json_out)


@app.command()
@handle_errors
def finetune(
    checkpoint: Annotated[
        str | None,
        typer.Argument(
            help="Checkpoint, run directory, foreign checkpoint or random:ARCH "
            "(default: runs/latest).",
            show_default=False,
        ),
    ] = None,
    dataset: EvalDatasetOpt = "phantom",
    data_dir: DataDirOpt = None,
    decoder: Annotated[str, typer.Option(help="Segmentation decoder: unet.")] = "unet",
    epochs: EpochsOpt = 20,
    image_size: ImageSizeOpt = None,
    label_fraction: FractionOpt = 1.0,
    dice_loss: Annotated[
        bool, typer.Option("--dice-loss/--no-dice-loss", help="Soft Dice loss + cross-entropy.")
    ] = True,
    batch_size: BatchOpt = None,
    lr: LrOpt = None,
    save_predictions: SavePredOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    phantom_cases: PhantomCasesOpt = 12,
    phantom_size: PhantomSizeOpt = 128,
    phantom_slices: PhantomSlicesOpt = 48,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
    arch: ArchOpt = None,
    state_dict_key: StateDictKeyOpt = None,
    strip_prefix: StripPrefixOpt = None,
    stem_stride: StemStrideOpt = None,
    model_kwargs: ModelKwargsOpt = None,
) -> None:
    """Fine-tune the pretrained encoder under a MONAI UNet decoder; per-organ 3D Dice."""
    from collapsekit.devices import resolve_device
    from collapsekit.evaluation.extract import recalibrate_baseline
    from collapsekit.evaluation.segmentation.finetune import FinetuneConfig
    from collapsekit.evaluation.segmentation.finetune import finetune as run_finetune

    spec = _specs([checkpoint] if checkpoint else None)[0]
    _check_specs([spec], "finetune")
    opts = model_options(arch, state_dict_key, strip_prefix, stem_stride, model_kwargs)
    _check_predictions_dir(save_predictions)
    dev = resolve_device(device)
    loading = load_options(cache_dir, preprocess_workers)
    with rich_progress(quiet or json_out) as progress:
        train, val, labels = _load_data(
            dataset, data_dir, (phantom_cases, phantom_size, phantom_slices), loading, progress
        )
        model = _load(spec, dev, opts, progress)
        cfg = FinetuneConfig(
            epochs=epochs,
            image_size=_image_size(model, image_size, progress),
            decoder=decoder,
            dice_loss=dice_loss,
            label_fraction=label_fraction,
            seed=seed,
            **_given(batch_size=batch_size, lr=lr),
        )
        model = recalibrate_baseline(model, train, cfg.image_size, progress)
        result = run_finetune(
            model.backbone,
            train,
            val,
            labels,
            cfg,
            name=model.name,
            device=dev,
            progress=progress,
            save_predictions=save_predictions,
        )
    _render([result], "Fine-tuning (UNet decoder)", json_out)


# ----------------------------------------------------------------------------------------------


def _specs(checkpoints: list[str] | None) -> list[str]:
    """The checkpoints to evaluate; ``runs/latest`` when none is given."""
    if checkpoints:
        return list(checkpoints)
    from collapsekit.runs.rundir import resolve_latest

    return [str(resolve_latest())]  # the run's own name labels the results, not "latest"


def _given(**options: Any) -> dict[str, Any]:
    """The options the user set (not None), so the config's own defaults apply to the rest."""
    return {k: v for k, v in options.items() if v is not None}


def _check_specs(specs: list[str], command: str) -> None:
    """Refuse a spec that names no model before the data is loaded (seconds to minutes)."""
    from collapsekit.runs.models import check_model_spec

    for spec in specs:
        check_model_spec(spec, needed_by=command)


def _check_predictions_dir(path: Path | None) -> None:
    if path is not None:
        from collapsekit.outputs import check_writable_dir

        check_writable_dir(path, "--save-predictions")


def _load(spec: str, device: str, options: ModelOptions, progress: ProgressCallback) -> LoadedModel:
    """The model, with what the loader assumed about a foreign checkpoint shown as warnings."""
    from collapsekit.data.preprocess import PreprocessConfig
    from collapsekit.progress import Message
    from collapsekit.runs.models import load_model

    model = load_model(spec, device=device, options=options)
    window = PreprocessConfig()  # _load_data's window
    for line in filter(
        None, [*model.assumptions, model.window_warning(window.a_min, window.a_max)]
    ):
        progress(Message(line, level="warning"))
    return model


def _image_size(model: LoadedModel, requested: int | None, progress: ProgressCallback) -> int:
    """``--image-size``, else the checkpoint's training size, else 128; warn when they differ."""
    from collapsekit.progress import Message

    trained = model.image_size
    if requested is None:
        return int(trained) if trained else 128
    if trained and trained != requested:
        progress(
            Message(
                f"{model.name} was pretrained on {trained}-px slices and is evaluated at "
                f"{requested} px (omit --image-size to use {trained})",
                level="warning",
            )
        )
    return requested


def _load_data(
    dataset: str,
    data_dir: Path | None,
    phantom_shape: tuple[int, int, int],
    loading: LoadOptions,
    progress: ProgressCallback,
) -> tuple[list[Volume], list[Volume], dict[int, str]]:
    """Training and validation volumes with labels (BTCV ids for both datasets); the phantom is
    ``phantom_shape`` = (cases, in-plane size, slices)."""
    from collapsekit.data import BTCV_LABELS, eval_phantom, load_split
    from collapsekit.options import look_up_option

    dataset = look_up_option(dataset, ("phantom", "btcv"), "dataset")
    phantom = None
    if dataset == "phantom":
        cases, size, slices = phantom_shape
        phantom = eval_phantom(cases=cases, size=size, slices=slices)
    root = str(data_dir) if data_dir is not None else None
    train, val = (
        load_split(dataset, root, split, phantom=phantom, options=loading, progress=progress)
        for split in ("training", "validation")
    )
    return list(train), list(val), dict(BTCV_LABELS)


def _pred_dir(root: Path | None, name: str, n: int) -> Path | None:
    """Predictions of several checkpoints go to one sub-directory each."""
    if root is None or n == 1:
        return root
    import re

    return root / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _cell(value: float | None) -> str:
    return "[dim]absent[/]" if value is None else f"{value:.3f}"


def _render(results: list[SegmentationResult], title: str, json_out: bool) -> None:
    if json_out:
        print_json({"results": [r.to_dict() for r in results]})
        return
    table = Table(title=f"{title}: 3D Dice per organ (validation)")
    table.add_column("organ")
    for r in results:
        table.add_column(r.checkpoint, justify="right")
    organs = list(results[0].dice) if results else []
    for organ in organs:
        table.add_row(organ, *(_cell(r.dice.get(organ)) for r in results))
    table.add_section()
    table.add_row("[bold]mean[/]", *(f"[bold]{_cell(_finite(r.mean_dice))}[/]" for r in results))
    table.add_row(
        "mean (organs present, per volume)", *(_cell(_finite(r.mean_dice_present)) for r in results)
    )
    console.print(table)
    absent = results[0].absent if results else {}
    everywhere = set.intersection(*(set(o) for o in absent.values())) if absent else set()
    missing = {case: [o for o in organs if o not in everywhere] for case, organs in absent.items()}
    missing = {case: organs for case, organs in missing.items() if organs}
    if missing:
        console.print(
            "[dim]absent from the ground truth (not scored): "
            + "; ".join(f"{case}: {', '.join(o)}" for case, o in missing.items())
            + "[/]",
            highlight=False,
        )


def _finite(x: float) -> float | None:
    import math

    return x if math.isfinite(x) else None
