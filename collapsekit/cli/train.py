"""``collapsekit train``: pretrain MoCo v2 (+ local, + ZCA) and monitor collapse live."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from collapsekit.cli.app import app
from collapsekit.cli.common import console, err_console, handle_errors, load_options, rich_progress
from collapsekit.cli.options import CacheDirOpt, DataDirOpt, PreprocessWorkersOpt, QuietOpt
from collapsekit.glossary import label

#: What ``--help`` shows as each option's default: ``TrainConfig``'s value (the ``default`` budget).
#: Written out so that ``--help`` does not import torch; tests/cli/test_help.py checks each against
#: ``TrainConfig()``. A config file or ``--budget`` changes them; a flag overrides both.
HELP_DEFAULTS = {
    "dataset": "phantom",
    "budget": "default",
    "augment": "ct",
    "local_negatives": "same_image",
    "method": "local+zca",
    "backbone": "resnet18",
    "epochs": "10",
    "batch_size": "32",
    "image_size": "128",
    "lr": "0.03",
    "seed": "0",
    "device": "auto",
    "num_workers": "2",
    "checkpoint_every": "0",
    "device_augment": "auto",
    "compile": "off",
}


@app.command(no_args_is_help=False)
@handle_errors
def train(
    config: Annotated[
        Path | None,
        typer.Option("--config", readable=False, help="TOML config file; flags override it."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            show_default=HELP_DEFAULTS["dataset"], help="phantom | abdomenct1k | btcv | folder"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    budget: Annotated[
        str | None,
        typer.Option(
            show_default=HELP_DEFAULTS["budget"],
            help="Named settings under the config file and flags: default | demo (the CPU regime "
            "where MoCo v2 is healthy on the phantom and dimensional collapse shows, ~10 min) | "
            "fair96 (issue 20's fair test: 96 px, ct preset, 600 steps) | fair128 (its GPU "
            "version: 128 px, batch 256).",
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(show_default=HELP_DEFAULTS["method"], help="mocov2 | local | zca | local+zca"),
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            show_default=HELP_DEFAULTS["augment"],
            help="Augmentation preset: ct (crops 0.2-1, quarter-strength intensity jitter) | "
            "mocov2 (full jitter + blur; collapsed in every measured run) | demo (crops 0.8-1).",
        ),
    ] = None,
    local_negatives: Annotated[
        str | None,
        typer.Option(
            "--local-negatives",
            show_default=HELP_DEFAULTS["local_negatives"],
            help="Negatives of the local loss: same_image (the paper's: other regions of the "
            "same image) | other_images (DenseCL/PixPro) | both.",
        ),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(show_default=HELP_DEFAULTS["backbone"], help="resnet18 | resnet34 | resnet50"),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1, show_default=HELP_DEFAULTS["epochs"], help="Epochs over the training slices."
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Total optimiser steps (overrides --epochs).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=2,
            show_default=HELP_DEFAULTS["batch_size"],
            help="Global batch size.",
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            "--image-size",
            min=32,
            show_default=HELP_DEFAULTS["image_size"],
            help="Training view size (px).",
        ),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(min=0.0, show_default=HELP_DEFAULTS["lr"], help="Base LR.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/<time>-<method>-<arch>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out (or runs/latest).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in --out.")
    ] = False,
    seed: Annotated[
        int | None, typer.Option(show_default=HELP_DEFAULTS["seed"], help="Random seed.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(show_default=HELP_DEFAULTS["device"], help="auto | cpu | cuda")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            show_default=HELP_DEFAULTS["num_workers"],
            help="DataLoader workers per process.",
        ),
    ] = None,
    device_augment: Annotated[
        str | None,
        typer.Option(
            "--device-augment",
            show_default=HELP_DEFAULTS["device_augment"],
            help="Make the two views on the training device: auto (on CUDA) | on | off.",
        ),
    ] = None,
    compile_mode: Annotated[
        str | None,
        typer.Option(
            "--compile",
            show_default=HELP_DEFAULTS["compile"],
            help="torch.compile the step: off | on | cudagraphs.",
        ),
    ] = None,
    stop_after: Annotated[
        int | None,
        typer.Option(
            "--stop-after", min=1, help="Stop after this many total steps (resume later)."
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every",
            min=0,
            show_default=HELP_DEFAULTS["checkpoint_every"],
            help="Also checkpoint every N steps.",
        ),
    ] = None,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Also write TensorBoard event files to <run>/tb: every metrics.jsonl field and "
            "the spectrum figure at each monitor step (needs collapsekit[tensorboard]).",
        ),
    ] = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Pretrain on CT slices and write a run directory (checkpoint, config, metrics, spectrum).

    Works under torchrun: `torchrun --nproc_per_node 2 -m collapsekit train ...`.
    """
    from collapsekit.train.config import config_from_dict, load_config
    from collapsekit.train.loop import train as run_training
    from collapsekit.train.tensorboard import require_tensorboard

    if tensorboard:
        require_tensorboard()  # one clear line before any work
    loading = load_options(cache_dir, preprocess_workers)
    overrides = dict(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        epochs=epochs,
        steps=steps,
        batch_size=batch_size,
        image_size=image_size,
        lr=lr,
        seed=seed,
        device=device,
        num_workers=workers,
        device_augment=device_augment,
        compile=compile_mode,
        cache_dir=str(cache_dir) if cache_dir else None,
        preprocess_workers=preprocess_workers,
        cache_direct_io=None if loading.direct_io else False,  # $COLLAPSEKIT_CACHE_DIRECT=0
        stop_after=stop_after,
        checkpoint_every=checkpoint_every,
        augment=augment,
        model={"method": method, "arch": backbone, "local_negatives": local_negatives},
    )
    cfg = (
        load_config(config, budget, **overrides)
        if config
        else config_from_dict({}, budget, **overrides)  # type: ignore[arg-type]
    )
    if out is not None:
        out = out.expanduser()  # a quoted '~/x' must not become a directory named '~'
    if resume and out is None:
        from collapsekit.runs.rundir import resolve_latest

        out = resolve_latest()
    given = None
    if resume:
        from collapsekit.train.resume import given_settings

        given = given_settings(overrides, config, budget)  # only what the user set counts
    is_main = loading.rank == 0
    if not quiet and is_main and not resume:
        _print_config(cfg)
    with rich_progress(quiet or not is_main) as progress:
        result = run_training(
            cfg,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            tensorboard=tensorboard,
            given=given,
        )
    if not quiet and is_main:
        _print_result(result, tensorboard)


def _print_result(result: Any, tensorboard: bool) -> None:
    """The run's outcome: state, the last metrics record, where the spectrum is, what next."""
    if result.already_finished:
        console.print(
            f"run already finished at step {result.step}; nothing rewritten in {result.run_dir} "
            f"(extend it with --steps N > {result.total_steps})"
        )
        return
    _print_closing(result, tensorboard=tensorboard)


_HEALTH_STYLE = {"healthy": "green", "not learning": "red", "collapsed": "red"}


def _print_closing(result: object, *, tensorboard: bool) -> None:
    """The closing lines: state, the last window's loss against chance, the headline ranks with
    the set they were measured on, the health verdict, and what to do next."""
    from collapsekit.train.loop import TrainResult

    assert isinstance(result, TrainResult)
    last = result.history[-1] if result.history else None
    state = "finished" if result.finished else f"stopped at step {result.step}/{result.total_steps}"
    console.print(f"[green]{state}[/] — run directory [bold]{result.run_dir}[/]")
    if last is not None:
        console.print(
            f"last {last.steps} steps: loss_global {last.loss_global:.3f} (chance ln(K+1) = "
            f"{last.loss_chance:.3f}), top1_in_batch {last.top1_in_batch:.3f} (chance 1/B = "
            f"{last.top1_in_batch_chance:.3f}), total loss {last.loss:.3f}, "
            f"{last.images_per_s:.1f} img/s"
        )
    final = result.final
    lam, sigma = label("effective_rank_lambda"), label("effective_rank_sigma")
    if final is not None:
        b, p = final.backbone, final.projector
        console.print(
            f"backbone: {lam} {b.effective_rank_lambda:.1f}, {sigma} {b.effective_rank_sigma:.1f}, "
            f"{label('rank_bound')} {b.rank_bound}; projector: {lam} {p.effective_rank_lambda:.1f}, "
            f"{label('mean_cosine')} {p.mean_cosine:.3f} — on {final.where}"
            + (", as `collapsekit spectrum` measures by default" if final.as_spectrum else "")
        )
    elif last is not None and last.backbone is not None and last.projector is not None:
        console.print(
            f"backbone: {lam} {last.backbone.effective_rank_lambda:.1f}; projector: {lam} "
            f"{last.projector.effective_rank_lambda:.1f}, {label('mean_cosine')} "
            f"{last.projector.mean_cosine:.3f} — on the held-out monitor slices (step {last.step}), "
            "rows L2-normalised"
        )
    if result.health is not None:
        style = _HEALTH_STYLE.get(result.health.health.value, "yellow")
        console.print(f"health: [{style}]{result.health}[/]")
    if result.finished:
        console.print(f"spectrum: {result.run_dir / 'spectrum.png'}")
    else:
        err_console.print(f"continue with: collapsekit train --resume --out {result.run_dir}")
    if tensorboard:
        console.print(f"tensorboard: tensorboard --logdir {result.run_dir / 'tb'}")


def _print_config(cfg: object) -> None:
    from collapsekit.train.config import config_to_dict

    data = config_to_dict(cfg)  # type: ignore[arg-type]
    table = Table(title="effective configuration", show_header=False, box=None)
    model = data.pop("model")
    for k, v in data.items():
        table.add_row(k, str(v))
    for k, v in model.items():
        table.add_row(f"model.{k}", str(v))
    console.print(table)
