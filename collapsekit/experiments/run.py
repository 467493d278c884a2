"""Running the ablation: check the inputs, evaluate the random baseline, pretrain and evaluate each
method and seed, then aggregate (:mod:`collapsekit.experiments.results`) and report
(:mod:`collapsekit.experiments.report`).

Resumable: a method/seed whose ``eval.json`` exists is not recomputed; an unfinished training run
is resumed from its checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from collapsekit.data import BTCV_LABELS, LoadOptions, Volume, discover, eval_phantom, load_split
from collapsekit.data.preprocess import check_readable
from collapsekit.devices import resolve_device
from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.diagnostics.similarity import SimilarityResult
from collapsekit.errors import ConfigError
from collapsekit.evaluation.extract import extract_embeddings, pixel_vectors, recalibrate_baseline
from collapsekit.evaluation.segmentation.probe import ProbeConfig, linear_probe
from collapsekit.experiments.ablation import METHOD_FLAGS, AblationConfig, train_config
from collapsekit.experiments.report import render_report
from collapsekit.experiments.results import (
    AblationResults,
    MethodResult,
    RunEvaluation,
    RunSummary,
    aggregate,
)
from collapsekit.outputs import writing
from collapsekit.progress import (
    Message,
    ProgressCallback,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    emit,
)
from collapsekit.runs.models import load_model
from collapsekit.runs.rundir import method_dirname
from collapsekit.serialization import to_jsonable, write_json
from collapsekit.train.loop import train
from collapsekit.train.records import read_metrics

__all__ = ["run_ablation", "load_results", "evaluate"]


@dataclass(frozen=True)
class EvalVolumes:
    """The evaluation set: the probe's training and validation volumes."""

    train: list[Volume]
    val: list[Volume]


def run_ablation(
    cfg: AblationConfig,
    out: str | Path,
    *,
    progress: ProgressCallback | None = None,
    tensorboard: bool = False,
    loading: LoadOptions = LoadOptions(),
) -> AblationResults:
    """Run (or resume) the ablation into ``out``; write ``results.json``, ``report.md`` and the
    figures, and return the results.

    ``loading``: how every volume is loaded, for pretraining and evaluation alike (the disk cache
    directory, preprocessing workers, O_DIRECT writes); a runtime setting that changes no result.

    With ``tensorboard`` every pretraining run also writes TensorBoard events to
    ``out/tb/<method>/seed<N>``: ``tensorboard --logdir out/tb`` overlays the methods' curves.
    (Runs reused from an earlier call keep whatever events they wrote then.)

    Raises:
        ConfigError: ``out`` holds an ablation with other settings, or a run stopped early.
    """
    out = Path(out)
    _claim_out_dir(cfg, out)
    device = resolve_device(cfg.device)
    _check_data(cfg)  # a wrong --data-dir fails now, not after the evaluation set was built
    vols = _eval_volumes(cfg, progress, loading)
    runs = [(m, seed) for m in cfg.methods for seed in range(cfg.seeds)]
    emit(progress, TaskStarted("ablate", total=len(runs) + 1, description="ablation"))
    _evaluate_baseline(cfg, out, vols, device, progress)
    for method, seed in runs:
        _train_and_evaluate(cfg, out, method, seed, vols, device, progress, tensorboard, loading)
    emit(progress, TaskFinished("ablate"))
    results = _collect(cfg, out, vols)
    kept = f"each run's checkpoint and evaluation in {out} were kept; re-run to finish"
    with writing(out / "results.json", kept=kept):
        write_json(results.to_dict(), out / "results.json")
    render_report(results, out)
    return results


def load_results(out: str | Path) -> AblationResults:
    """Read ``results.json`` of an ablation directory (this version's or an earlier one's).

    Raises:
        ConfigError: there is none.
    """
    path = Path(out) / "results.json"
    if not path.is_file():
        raise ConfigError(f"no results.json in {out} (run `collapsekit ablate --out {out}` first)")
    return AblationResults.from_dict(json.loads(path.read_text()))


def _claim_out_dir(cfg: AblationConfig, out: Path) -> None:
    """Create ``out`` and record the config; refuse one that holds another ablation."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "ablation_config.json"
    plain = to_jsonable(asdict(cfg))
    runtime = ("methods", "seeds", "device")  # may change between calls
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        if {k: v for k, v in old.items() if k not in runtime} != {
            k: v for k, v in plain.items() if k not in runtime
        }:
            raise ConfigError(
                f"{out} holds an ablation with other settings ({cfg_file}); use another --out"
            )
    with writing(cfg_file, kept="nothing was written"):
        write_json(plain, cfg_file)


def _check_data(cfg: AblationConfig) -> None:
    for dataset, root in ((cfg.dataset, cfg.data_dir), (cfg.eval_dataset, cfg.eval_data_dir)):
        if dataset != "phantom":
            for record in discover(dataset, root).split("all"):
                for path in (record.image, record.label):
                    if path is not None and path.is_file():
                        check_readable(path)


def _eval_volumes(
    cfg: AblationConfig, progress: ProgressCallback | None, loading: LoadOptions
) -> EvalVolumes:
    # The evaluation phantom: cases unseen during pretraining.
    phantom = eval_phantom(cases=cfg.settings.phantom_cases)
    kw: dict[str, Any] = dict(phantom=phantom, options=loading, progress=progress)
    return EvalVolumes(
        train=load_split(cfg.eval_dataset, cfg.eval_data_dir, "training", **kw),
        val=load_split(cfg.eval_dataset, cfg.eval_data_dir, "validation", **kw),
    )


def evaluate(
    model: Any,
    name: str,
    cfg: AblationConfig,
    vols: EvalVolumes,
    device: str,
    progress: ProgressCallback | None,
) -> RunEvaluation:
    """Spectra (pooled and dense), similarity and linear probe of one model on the evaluation set."""
    s = cfg.settings
    kw: dict[str, Any] = dict(
        image_size=s.image_size, samples=s.samples, device=device, name=name, progress=progress
    )
    emb = extract_embeddings(model, vols.train + vols.val, mode="backbone", **kw)
    dense = extract_embeddings(model, vols.train + vols.val, mode="dense", **kw)
    probe_cfg = ProbeConfig(
        epochs=s.probe_epochs, image_size=s.probe_image_size, output_stride=s.probe_output_stride
    )
    probe = linear_probe(
        getattr(model, "backbone", model),
        vols.train,
        vols.val,
        BTCV_LABELS,
        probe_cfg,
        name=name,
        device=device,
        progress=progress,
    )
    return RunEvaluation(
        backbone=spectrum_report(emb.z, name=name),
        dense=spectrum_report(dense.z, name=name),
        similarity=pairwise_cosine_stats(emb.z, groups=emb.volume, name=name),
        probe=probe,
    )


def _evaluate_baseline(
    cfg: AblationConfig,
    out: Path,
    vols: EvalVolumes,
    device: str,
    progress: ProgressCallback | None,
) -> None:
    """The random baseline (one row, seed-independent), BN statistics re-estimated on the probe's
    training volumes (the honest baseline)."""
    base_file = out / "random" / "eval.json"
    if base_file.exists():
        emit(progress, Message(f"reusing {base_file}"))
    else:
        baseline = recalibrate_baseline(
            load_model(f"random:{cfg.settings.arch}", device),
            vols.train,
            cfg.settings.image_size,
            progress,
        )
        ev = evaluate(baseline, baseline.name, cfg, vols, device, progress)
        write_json(ev.to_dict(), base_file)
    emit(progress, TaskAdvanced("ablate", info={"done": "random"}))


def _train_and_evaluate(
    cfg: AblationConfig,
    out: Path,
    method: str,
    seed: int,
    vols: EvalVolumes,
    device: str,
    progress: ProgressCallback | None,
    tensorboard: bool,
    loading: LoadOptions,
) -> None:
    """Pretrain one method/seed (resuming an unfinished run) and write its ``eval.json``."""
    run_dir = _run_dir(out, method, seed)
    eval_file = run_dir / "eval.json"
    if eval_file.exists():
        emit(progress, Message(f"reusing {eval_file}"))
    else:
        resume = (run_dir / "checkpoint.pt").exists()
        tb: bool | Path = (
            out / "tb" / method_dirname(method) / f"seed{seed}" if tensorboard else False
        )
        res = train(
            train_config(cfg, method, seed, loading),
            run_dir,
            resume=resume,
            overwrite=not resume,
            progress=progress,
            tensorboard=tb,
        )
        if not res.finished:  # pragma: no cover - only with stop_after
            raise ConfigError(f"training of {method} stopped early at step {res.step}")
        ev = evaluate(load_model(run_dir, device), method, cfg, vols, device, progress)
        write_json(ev.to_dict(), eval_file)
    emit(progress, TaskAdvanced("ablate", info={"done": f"{method}/seed{seed}"}))


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method_dirname(method) / f"seed{seed}"


def _method_result(cfg: AblationConfig, out: Path, method: str) -> MethodResult:
    """One method's evaluations and metrics rows read back from ``out``, and their aggregate."""
    if method == "random":
        files, history = [out / "random" / "eval.json"], []
    else:
        dirs = [_run_dir(out, method, s) for s in range(cfg.seeds)]
        files = [d / "eval.json" for d in dirs]
        history = [tuple(read_metrics(d / "metrics.jsonl")) for d in dirs]
    evals = tuple(RunEvaluation.from_dict(json.loads(f.read_text())) for f in files)
    lasts = [h[-1] if h else None for h in history] or [None]
    per_seed = tuple(RunSummary.of(e, last) for e, last in zip(evals, lasts, strict=True))
    mean, std = aggregate(per_seed)
    local, zca = METHOD_FLAGS[method]
    arch = cfg.settings.arch
    return MethodResult(
        method=method,
        label=method if method != "random" else f"random:{arch} (BN recalibrated)",
        local=local,
        zca=zca,
        seeds=len(evals),
        mean=mean,
        std=std,
        per_seed=per_seed,
        evals=evals,
        history=tuple(history),
    )


def _collect(cfg: AblationConfig, out: Path, vols: EvalVolumes) -> AblationResults:
    """Aggregate every method's files, and measure the pixels' own similarity once."""
    x, vol_ids = pixel_vectors(vols.train + vols.val, cfg.settings.samples, size=64)
    pixels: SimilarityResult = pairwise_cosine_stats(x, groups=vol_ids, name="pixels (64x64)")
    return AblationResults(
        config=cfg,
        settings=cfg.settings,
        pixels=pixels,
        methods=tuple(_method_result(cfg, out, m) for m in ("random", *cfg.methods)),
    )
