"""``collapsekit ablate``: the paper's ablation table, measured on the user's data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from collapsekit.cli.app import app
from collapsekit.cli.common import console, handle_errors, load_options, rich_progress
from collapsekit.cli.options import CacheDirOpt, DeviceOpt, PreprocessWorkersOpt, QuietOpt
from collapsekit.glossary import label


@app.command()
@handle_errors
def ablate(
    dataset: Annotated[
        str, typer.Option(help="Pretraining data: phantom | abdomenct1k | folder")
    ] = "phantom",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", readable=False, help="Pretraining data root.")
    ] = None,
    eval_dataset: Annotated[str, typer.Option("--eval-dataset", help="phantom | btcv")] = "phantom",
    eval_data_dir: Annotated[
        Path | None, typer.Option("--eval-data-dir", readable=False, help="BTCV root.")
    ] = None,
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods.")
    ] = "mocov2,local,zca,local+zca",
    budget: Annotated[
        str,
        typer.Option(
            help="demo (the regime where MoCo v2 is healthy and collapse shows; ~10 min per run "
            "on 2 CPU cores) | fair96 (issue 20's fair test: 96 px, ct preset, same-image local "
            "negatives, block ZCA) | fair128 (its GPU version, batch 256) | small (128 px, "
            "10 epochs) | paper (GPU)"
        ),
    ] = "demo",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method (mean ± std when > 1).")] = 1,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Override the budget's pretraining epochs.")
    ] = None,
    probe_epochs: Annotated[
        int | None, typer.Option("--probe-epochs", min=1, help="Override probe epochs.")
    ] = None,
    local_negatives: Annotated[
        str | None,
        typer.Option(
            "--local-negatives",
            help="Override the budget's local negatives: same_image | other_images | both.",
        ),
    ] = None,
    zca_placement: Annotated[
        str | None,
        typer.Option(
            "--zca-placement",
            help="Override the budget's ZCA placement: block (the authors' code) | "
            "pre_projector (the paper's wording).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Results directory (re-run to resume).")] = Path(
        "runs/ablation"
    ),
    device: DeviceOpt = "auto",
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Write each run's TensorBoard events to <out>/tb/<method>/seed<N>, so "
            "`tensorboard --logdir <out>/tb` overlays the methods (needs collapsekit[tensorboard]).",
        ),
    ] = False,
    quiet: QuietOpt = False,
    preprocess_workers: PreprocessWorkersOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Pretrain every method, diagnose and probe each, and write report.md + results.json + figures."""
    from collapsekit.experiments import AblationConfig, run_ablation
    from collapsekit.outputs import check_writable_dir
    from collapsekit.train.tensorboard import require_tensorboard

    if tensorboard:
        require_tensorboard()
    check_writable_dir(out, "--out")
    from collapsekit.models import LOCAL_NEGATIVES, ZCA_PLACEMENTS
    from collapsekit.options import look_up_option

    # a misspelt model option fails now, not when the first run is built
    if local_negatives is not None:
        local_negatives = look_up_option(local_negatives, LOCAL_NEGATIVES, "local negatives")
    if zca_placement is not None:
        zca_placement = look_up_option(zca_placement, ZCA_PLACEMENTS, "zca placement")

    overrides = {
        k: v
        for k, v in {
            "epochs": epochs,
            "probe_epochs": probe_epochs,
            "local_negatives": local_negatives,
            "zca_placement": zca_placement,
        }.items()
        if v is not None
    }
    cfg = AblationConfig(
        dataset=dataset,
        data_dir=str(data_dir) if data_dir else None,
        eval_dataset=eval_dataset,
        eval_data_dir=str(eval_data_dir) if eval_data_dir else None,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        budget=budget,
        seeds=seeds,
        device=device,
        overrides=overrides,
    )
    with rich_progress(quiet) as progress:
        results = run_ablation(
            cfg,
            out,
            progress=progress,
            tensorboard=tensorboard,
            loading=load_options(cache_dir, preprocess_workers),
        )
    if quiet:
        return
    _print_table(results, seeds)
    console.print(f"report: {out / 'report.md'}")
    if tensorboard:
        console.print(f"tensorboard: tensorboard --logdir {out / 'tb'}")


def _print_table(results: object, seeds: int) -> None:
    from collapsekit.experiments import AblationResults

    assert isinstance(results, AblationResults)

    def num(value: float | None, scale: float = 1.0) -> str:
        return "–" if value is None else f"{scale * value:.1f}"

    table = Table(title=f"Ablation ({results.config.budget} budget, {seeds} seed(s))")
    ranks = tuple(
        label(f"{layer}/effective_rank_lambda") for layer in ("backbone", "dense", "projector")
    )
    columns = ("method", "local", "ZCA", "health", *ranks)
    for col in (*columns, "mean Dice"):
        table.add_column(col, justify="left" if col in ("method", "health") else "right")
    flag = {True: "✓", False: "", None: "–"}
    for m in results.methods:
        mean = m.mean
        table.add_row(
            m.label,
            flag[m.local],
            flag[m.zca],
            mean.health or "–",
            num(mean.backbone.effective_rank_lambda),
            num(mean.dense.effective_rank_lambda),
            num(mean.projector.effective_rank_lambda),
            num(mean.mean_dice, 100.0),
        )
    console.print(table)
    console.print(
        f"{label('effective_rank_lambda')}: backbone and dense on the evaluation slices, projector "
        "on the held-out monitor slices at the end of pretraining; rows L2-normalised.",
        style="dim",
    )
