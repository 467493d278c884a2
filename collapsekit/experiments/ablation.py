"""The paper's ablation, end to end: pretrain each method, diagnose it, probe it, report it.

For each method (``mocov2``, ``local``, ``zca``, ``local+zca``) and seed, with the same data and
budget: pretrain; compute the global and dense spectra of the backbone (effective rank both ways,
α-ReQ), the inter-image cosine similarity of its embeddings, and the linear-probe Dice per organ on the
evaluation set. A ``random:ARCH`` baseline gets the same evaluation, and the pixels' own similarity is
measured once. Everything lands in ``results.json``; ``report.md`` and the figures are rendered from it.

Resumable: a method/seed whose ``eval.json`` exists is not recomputed; an unfinished training run
is resumed from its checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from collapsekit.data import BTCV_LABELS, LoadOptions, discover, eval_phantom, load_split
from collapsekit.data.preprocess import check_readable
from collapsekit.devices import resolve_device
from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.diagnostics.similarity import SimilarityResult
from collapsekit.diagnostics.spectrum import SpectrumResult
from collapsekit.errors import ConfigError
from collapsekit.evaluation.extract import extract_embeddings, pixel_vectors, recalibrate_baseline
from collapsekit.evaluation.segmentation.probe import ProbeConfig, linear_probe
from collapsekit.options import look_up_option
from collapsekit.outputs import writing
from collapsekit.plotting import (
    plot_ablation_dice,
    plot_rank_history,
    plot_similarity,
    plot_spectrum,
    save_figure,
)
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
from collapsekit.train.config import config_from_dict
from collapsekit.train.loop import train

__all__ = [
    "BUDGETS",
    "BUDGET_KEYS",
    "Budget",
    "AblationConfig",
    "run_ablation",
    "render_report",
    "load_results",
    "METHOD_FLAGS",
]

#: Model settings an ablation may override for every method (e.g. to compare ZCA placements).
MODEL_KEYS = ("zca_placement", "zca_group_size", "local_layer", "local_negatives")

METHOD_FLAGS = {
    "random": (None, None),
    "mocov2": (False, False),
    "local": (True, False),
    "zca": (False, True),
    "local+zca": (True, True),
}


@dataclass(frozen=True)
class Budget:
    """The settings of one ablation budget; ``None`` means "not set" (absent from ``settings``).

    Training either follows a named train budget (``train_budget``, see
    :data:`collapsekit.train.config.TRAIN_BUDGETS`; then only explicit overrides of the training
    fields change it) or is built from the training fields here. ``phantom_cases`` sizes the
    evaluation phantom in both cases (and the pretraining phantom without a train budget).

    Args:
        arch: backbone, e.g. ``"resnet18"``.
        image_size: pretraining and extraction image size (px).
        phantom_cases: cases of the evaluation phantom.
        samples: slices embedded for the spectra and similarity.
        probe_epochs, probe_image_size, probe_output_stride: the linear probe.
        train_budget: a named train budget, or ``None``.
        epochs, steps, batch_size, queue_size, momentum: training settings (``None``: the
            train budget's or the training default).
        zca_placement, zca_group_size, local_layer, local_negatives: model settings
            (:data:`MODEL_KEYS`) applied to every method.
    """

    # The field order is the key order of ``settings`` in results.json.
    train_budget: str | None = None
    arch: str = "resnet18"
    image_size: int = 128
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    queue_size: int | None = None
    momentum: float | None = None
    phantom_cases: int = 12
    samples: int = 1024
    probe_epochs: int = 20
    probe_image_size: int = 128
    probe_output_stride: int = 8
    zca_placement: str | None = None
    zca_group_size: int | None = None
    local_layer: str | None = None
    local_negatives: str | None = None

    def with_overrides(self, overrides: dict[str, Any]) -> Budget:
        """This budget with ``overrides`` (budget keys) applied.

        Raises:
            ConfigError: a key that is not a budget setting.
        """
        unknown = set(overrides) - set(BUDGET_KEYS)
        if unknown:
            raise ConfigError(f"unknown budget keys {sorted(unknown)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The settings that are set, as the plain dict stored under ``settings`` in results.json."""
        return {k: v for k, v in asdict(self).items() if v is not None}


#: Every setting a budget has (and an override may change).
BUDGET_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Budget))

#: The budgets. ``demo`` pretrains with ``collapsekit train --budget demo`` (the regime where MoCo
#: v2 is healthy on the phantom and dimensional collapse shows; ~7–12 min per run on 2 CPU cores)
#: and evaluates at the same 64 px; ``small`` fits ≤ 25 min on 2 CPU cores on the phantom;
#: ``paper`` is the paper-scale setting (ResNet-50, long schedule) meant for a GPU.
BUDGETS: dict[str, Budget] = {
    "demo": Budget(
        train_budget="demo",
        arch="resnet18",
        image_size=64,
        phantom_cases=48,
        samples=1024,
        probe_epochs=20,
        probe_image_size=64,
        probe_output_stride=8,
    ),
    # issue 20's fair test on CPU (pre-registered in docs/_drafts/fixes.md): train budget fair96,
    # evaluated at 96 px like the demo
    "fair96": Budget(
        train_budget="fair96",
        arch="resnet18",
        image_size=96,
        phantom_cases=48,
        samples=1024,
        probe_epochs=20,
        probe_image_size=96,
        probe_output_stride=8,
        local_negatives="same_image",
        zca_placement="block",
    ),
    "fair128": Budget(
        train_budget="fair128",
        arch="resnet18",
        image_size=128,
        phantom_cases=48,
        samples=1024,
        probe_epochs=20,
        probe_image_size=128,
        probe_output_stride=8,
        local_negatives="same_image",
        zca_placement="block",
    ),
    "small": Budget(
        arch="resnet18",
        image_size=128,
        epochs=10,
        batch_size=32,
        queue_size=1024,
        momentum=0.99,
        phantom_cases=12,
        samples=1024,
        probe_epochs=20,
        probe_image_size=128,
        probe_output_stride=8,
    ),
    "paper": Budget(
        arch="resnet50",
        image_size=224,
        epochs=200,
        batch_size=256,
        queue_size=65536,
        momentum=0.999,
        phantom_cases=200,
        samples=4096,
        probe_epochs=80,
        probe_image_size=224,
        probe_output_stride=8,
    ),
}


@dataclass(frozen=True)
class AblationConfig:
    """What ``collapsekit ablate`` runs (see :data:`BUDGETS`)."""

    dataset: str = "phantom"
    data_dir: str | None = None
    eval_dataset: str = "phantom"
    eval_data_dir: str | None = None
    methods: tuple[str, ...] = ("mocov2", "local", "zca", "local+zca")
    budget: str = "demo"
    seeds: int = 1
    device: str = "auto"
    overrides: dict[str, Any] = field(
        default_factory=dict
    )  # budget keys to change (e.g. epochs=1 in tests)

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", look_up_option(self.budget, BUDGETS, "budget"))
        object.__setattr__(
            self,
            "dataset",
            look_up_option(self.dataset, ("phantom", "abdomenct1k", "folder", "btcv"), "dataset"),
        )
        object.__setattr__(
            self,
            "eval_dataset",
            look_up_option(self.eval_dataset, ("phantom", "btcv"), "eval dataset"),
        )
        methods = tuple(
            look_up_option(m, ("mocov2", "local", "zca", "local+zca"), "method")
            for m in self.methods
        )
        if not methods:
            raise ConfigError("--methods is empty")
        object.__setattr__(self, "methods", methods)
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {self.seeds}")
        BUDGETS[self.budget].with_overrides(self.overrides)  # unknown keys fail here
        if self.dataset != "phantom" and not self.data_dir:
            raise ConfigError(f"--data-dir is required for --dataset {self.dataset}")
        if self.eval_dataset != "phantom" and not self.eval_data_dir:
            raise ConfigError(f"--eval-data-dir is required for --eval-dataset {self.eval_dataset}")

    @property
    def settings(self) -> Budget:
        """The budget with the overrides applied."""
        return BUDGETS[self.budget].with_overrides(self.overrides)


def _train_config(cfg: AblationConfig, method: str, seed: int, loading: LoadOptions) -> Any:
    """The pretraining config of one run: a named train budget (``demo``) or the budget's keys;
    its volumes are loaded as ``loading`` says (cache directory, workers, O_DIRECT)."""
    budget = cfg.settings
    s = budget.to_dict()  # the settings that are set
    train_keys = ("image_size", "epochs", "steps", "batch_size", "phantom_cases")
    model = {"method": method, "arch": budget.arch}
    model.update({k: s[k] for k in ("queue_size", "momentum", *MODEL_KEYS) if k in s})
    # an epochs override replaces the train budget's step count
    data: dict[str, Any] = {}
    if "epochs" in cfg.overrides and "steps" not in cfg.overrides:
        data["steps"] = None
    if "phantom_cases" in cfg.overrides:  # the budget's held-out count may not fit: default it
        data["phantom_validation"] = None
    return config_from_dict(
        data,
        budget.train_budget,
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        seed=seed,
        device=cfg.device,
        cache_dir=str(loading.cache_dir) if loading.cache_dir else None,
        preprocess_workers=loading.workers,
        cache_direct_io=loading.direct_io,
        # with a named train budget only explicit overrides change its training settings (the
        # budget's own phantom_cases sizes the evaluation phantom)
        **{
            k: getattr(budget, k)
            for k in train_keys
            if k in (cfg.overrides if budget.train_budget is not None else s)
        },
        model=model,
    )


def _eval_volumes(
    cfg: AblationConfig, progress: ProgressCallback | None, loading: LoadOptions
) -> dict[str, Any]:

    # The evaluation phantom: cases unseen during pretraining.
    phantom = eval_phantom(cases=cfg.settings.phantom_cases)
    kw: dict[str, Any] = dict(phantom=phantom, options=loading, progress=progress)
    return {
        "train": load_split(cfg.eval_dataset, cfg.eval_data_dir, "training", **kw),
        "val": load_split(cfg.eval_dataset, cfg.eval_data_dir, "validation", **kw),
    }


def _evaluate(
    model: Any,
    name: str,
    cfg: AblationConfig,
    vols: dict[str, Any],
    device: str,
    progress: ProgressCallback | None,
) -> dict[str, Any]:

    s = cfg.settings
    all_vols = vols["train"] + vols["val"]
    kw: dict[str, Any] = dict(
        image_size=s.image_size,
        samples=s.samples,
        device=device,
        name=name,
        progress=progress,
    )
    emb = extract_embeddings(model, all_vols, mode="backbone", **kw)
    dense = extract_embeddings(model, all_vols, mode="dense", **kw)
    glob = spectrum_report(emb.z, name=name)
    dens = spectrum_report(dense.z, name=name)
    sim = pairwise_cosine_stats(emb.z, groups=emb.volume, name=name)
    probe_cfg = ProbeConfig(
        epochs=s.probe_epochs,
        image_size=s.probe_image_size,
        output_stride=s.probe_output_stride,
    )
    backbone = getattr(model, "backbone", model)
    probe = linear_probe(
        backbone,
        vols["train"],
        vols["val"],
        BTCV_LABELS,
        probe_cfg,
        name=name,
        device=device,
        progress=progress,
    )
    return {
        "global": glob.to_dict(),
        "dense": dens.to_dict(),
        "similarity": sim.to_dict(),
        "probe": probe.to_dict(),
    }


def _summary(ev: dict[str, Any], last: dict[str, Any] | None = None) -> dict[str, float | None]:
    """The scalar metrics the report tabulates; ``last``: the run's final metrics.jsonl record
    (contrastive loss, top-1 and the projector space at the end of pretraining)."""
    glob, dense = SpectrumResult.from_dict(ev["global"]), SpectrumResult.from_dict(ev["dense"])
    last = last or {}
    out: dict[str, float | None] = {
        "effective_rank": glob.effective_rank_sigma,
        "effective_rank_uncentered": glob.rankme,
        "effective_rank_eigenvalues": glob.effective_rank_lambda,
        "dense_effective_rank": dense.effective_rank_sigma,
        "dense_effective_rank_eigenvalues": dense.effective_rank_lambda,
        "final_loss": last.get("loss_global"),
        "loss_chance": last.get("loss_chance"),
        "top1": last.get("top1"),
        "proj_effective_rank_eigenvalues": last.get("proj_effective_rank_eigenvalues"),
        "proj_mean_cosine": last.get("proj_mean_cosine"),
        "alpha": glob.to_dict()["alpha"],  # None when NaN
        "cosine_mean": SimilarityResult.from_dict(ev["similarity"]).mean_cosine,
        "mean_dice": ev["probe"]["mean_dice"],
    }
    for organ, d in ev["probe"]["dice"].items():
        out[f"dice/{organ}"] = d
    return out


def _aggregate(
    summaries: list[dict[str, float | None]],
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for key in summaries[0]:
        vals = [float(v) for s in summaries if (v := s.get(key)) is not None]
        mean[key] = float(np.mean(vals)) if vals else None
        std[key] = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
    return mean, std


def run_ablation(
    cfg: AblationConfig,
    out: str | Path,
    *,
    progress: ProgressCallback | None = None,
    tensorboard: bool = False,
    loading: LoadOptions = LoadOptions(),
) -> dict[str, Any]:
    """Run (or resume) the ablation into ``out`` and return the ``results.json`` content.

    ``loading``: how every volume is loaded, for pretraining and evaluation alike (the disk cache
    directory, preprocessing workers, O_DIRECT writes); a runtime setting that changes no result.

    With ``tensorboard`` every pretraining run also writes TensorBoard events to
    ``out/tb/<method>/seed<N>``: ``tensorboard --logdir out/tb`` overlays the methods' curves.
    (Runs reused from an earlier call keep whatever events they wrote then.)
    """

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "ablation_config.json"
    plain_cfg = to_jsonable(asdict(cfg))
    if cfg_file.exists():
        old = json.loads(cfg_file.read_text())
        if {k: v for k, v in old.items() if k not in ("methods", "seeds", "device")} != {
            k: v for k, v in plain_cfg.items() if k not in ("methods", "seeds", "device")
        }:
            raise ConfigError(
                f"{out} holds an ablation with other settings ({cfg_file}); use another --out"
            )
    with writing(cfg_file, kept="nothing was written"):
        write_json(plain_cfg, cfg_file)
    device = resolve_device(cfg.device)
    # A wrong --data-dir fails now, not after the evaluation set has been built.
    for dataset, root in ((cfg.dataset, cfg.data_dir), (cfg.eval_dataset, cfg.eval_data_dir)):
        if dataset != "phantom":
            for record in discover(dataset, root).split("all"):
                for path in (record.image, record.label):
                    if path is not None and path.is_file():
                        check_readable(path)
    vols = _eval_volumes(cfg, progress, loading)
    runs = [(m, seed) for m in cfg.methods for seed in range(cfg.seeds)]
    emit(progress, TaskStarted("ablate", total=len(runs) + 1, description="ablation"))

    per_method: dict[str, dict[str, Any]] = {}
    # random baseline (one row, seed-independent)
    base_file = out / "random" / "eval.json"
    arch = cfg.settings.arch
    if not base_file.exists():
        # BN statistics re-estimated on the probe's training volumes (the honest baseline)
        baseline = recalibrate_baseline(
            load_model(f"random:{arch}", device), vols["train"], cfg.settings.image_size, progress
        )
        ev = _evaluate(baseline, baseline.name, cfg, vols, device, progress)
        write_json(ev, base_file)
    else:
        emit(progress, Message(f"reusing {base_file}"))
    emit(progress, TaskAdvanced("ablate", info={"done": "random"}))

    for method, seed in runs:
        run_dir = out / method_dirname(method) / f"seed{seed}"
        eval_file = run_dir / "eval.json"
        if eval_file.exists():
            emit(progress, Message(f"reusing {eval_file}"))
        else:
            tcfg = _train_config(cfg, method, seed, loading)
            resume = (run_dir / "checkpoint.pt").exists()
            tb: bool | Path = False
            if tensorboard:
                tb = out / "tb" / method_dirname(method) / f"seed{seed}"
            res = train(
                tcfg,
                run_dir,
                resume=resume,
                overwrite=not resume,
                progress=progress,
                tensorboard=tb,
            )
            if not res.finished:  # pragma: no cover - only with stop_after
                raise ConfigError(f"training of {method} stopped early at step {res.step}")
            model = load_model(run_dir, device)
            ev = _evaluate(model, method, cfg, vols, device, progress)
            write_json(ev, eval_file)
        emit(progress, TaskAdvanced("ablate", info={"done": f"{method}/seed{seed}"}))
    emit(progress, TaskFinished("ablate"))

    # pixel-space similarity, once
    x, vol_ids = pixel_vectors(vols["train"] + vols["val"], cfg.settings.samples, size=64)
    pixels = pairwise_cosine_stats(x, groups=vol_ids, name="pixels (64x64)").to_dict()

    for method in ("random", *cfg.methods):
        if method == "random":
            files = [base_file]
        else:
            files = [
                out / method_dirname(method) / f"seed{s}" / "eval.json" for s in range(cfg.seeds)
            ]
        evals = [json.loads(f.read_text()) for f in files]
        history = []
        if method != "random":
            for s in range(cfg.seeds):
                mfile = out / method_dirname(method) / f"seed{s}" / "metrics.jsonl"
                history.append(
                    [json.loads(line) for line in mfile.read_text().splitlines() if line.strip()]
                )
        sums = [
            _summary(e, h[-1] if h else None)
            for e, h in zip(evals, history or [[]] * len(evals), strict=True)
        ]
        mean, std = _aggregate(sums)
        local, zca = METHOD_FLAGS[method]
        per_method[method] = {
            "method": method if method != "random" else f"random:{arch} (BN recalibrated)",
            "local": local,
            "zca": zca,
            "seeds": len(evals),
            "mean": mean,
            "std": std,
            "per_seed": sums,
            "evals": evals,
            "history": history,
        }
    results = {
        "config": plain_cfg,
        "settings": cfg.settings.to_dict(),
        "pixels": pixels,
        "methods": per_method,
    }
    kept = f"each run's checkpoint and evaluation in {out} were kept; re-run to finish"
    with writing(out / "results.json", kept=kept):
        write_json(results, out / "results.json")
    render_report(results, out)
    return results


def load_results(out: str | Path) -> dict[str, Any]:
    """Read ``results.json`` of an ablation directory."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise ConfigError(f"no results.json in {out} (run `collapsekit ablate --out {out}` first)")
    return json.loads(path.read_text())


def _fmt(
    mean: float | None, std: float | None, seeds: int, pct: bool = False, digits: int = 1
) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    scale = 100.0 if pct else 1.0
    txt = f"{mean * scale:.{digits}f}"
    if seeds > 1 and std is not None:
        txt += f" ± {std * scale:.{digits}f}"
    return txt


def _schedule(settings: dict[str, Any]) -> str:
    if "steps" in settings:
        return f"{settings['steps']} steps"
    if "epochs" in settings:
        return f"{settings['epochs']} epochs"
    budget = settings.get("train_budget")
    return f"train budget `{budget}`" if budget else "default schedule"


def render_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write the figures and ``report.md`` (a table shaped like the paper's ablation) from results."""

    out = Path(out)
    methods = results["methods"]
    organs: list[str] = []
    for m in methods.values():
        organs = [k.split("/", 1)[1] for k in m["mean"] if k.startswith("dice/")]
        if organs:
            break

    glob = [SpectrumResult.from_dict(m["evals"][0]["global"]) for m in methods.values()]
    dens = [SpectrumResult.from_dict(m["evals"][0]["dense"]) for m in methods.values()]
    for spec, m in zip(glob + dens, list(methods.values()) * 2, strict=True):
        object.__setattr__(spec, "name", m["method"])
    save_figure(
        plot_spectrum(glob, title="Global (pooled) backbone spectrum")[0],
        out / "spectra_global.png",
    )
    save_figure(
        plot_spectrum(dens, title="Dense (per-location) feature spectrum")[0],
        out / "spectra_dense.png",
    )
    sims: list[SimilarityResult] = [SimilarityResult.from_dict(results["pixels"])] + [
        SimilarityResult.from_dict(m["evals"][0]["similarity"]) for m in methods.values()
    ]
    for sim, name in zip(sims[1:], [m["method"] for m in methods.values()], strict=True):
        object.__setattr__(sim, "name", name)
    save_figure(plot_similarity(sims)[0], out / "similarity.png")
    save_figure(plot_ablation_dice(results)[0], out / "dice_per_organ.png")
    save_figure(
        plot_rank_history(
            results,
            key="effective_rank_eigenvalues",
            title="Backbone λ-effective rank of the monitor slices during pretraining",
        )[0],
        out / "effective_rank_backbone.png",
    )
    save_figure(
        plot_rank_history(
            results,
            key="proj_effective_rank_eigenvalues",
            title="Projector λ-effective rank of the monitor slices during pretraining",
        )[0],
        out / "effective_rank_projector.png",
    )

    seeds = max(m["seeds"] for m in methods.values())
    lines = [
        "# collapsekit ablation report",
        "",
        f"Pretraining data: `{results['config']['dataset']}`; evaluation: `{results['config']['eval_dataset']}`; "
        f"budget `{results['config']['budget']}` ({results['settings']['arch']}, "
        f"{_schedule(results['settings'])}, {results['settings']['image_size']} px); "
        f"seeds: {seeds}{' (mean ± std)' if seeds > 1 else ''}.",
        "",
        "Ranks are effective ranks (exp-entropy) of the L2-normalised embeddings of held-out slices: "
        "**λ** on the covariance eigenvalues (the variance spectrum Jing et al. plot; it shows collapse "
        "clearly), **σ** on the singular values of the centred matrix (compresses differences). "
        "Backbone: pooled output (what probes use; the input of a pre-projector ZCA). Projector: the "
        "contrastive space, from the run's last monitor record. Loss / top-1: the global InfoNCE and "
        "how often the positive outranks every queued negative, over the last monitor window "
        "(chance: ln(K+1) and ≈ 0). Dice: linear probe, 3D, per organ, mean over the organs (%). The "
        "random baseline has its BatchNorm statistics re-estimated on the evaluation data.",
        "",
        "| Method | Local | ZCA | Loss (chance) | Top-1 | Proj. λ-rank | Proj. cos | "
        "Backbone λ-rank | Backbone σ-rank | Dense λ-rank | α | Cos. sim. | Mean Dice |",
        "|---|:-:|:-:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in methods.values():
        mean, std, n = m["mean"], m["std"], m["seeds"]
        flag = {True: "✓", False: "", None: "–"}

        def cell(key: str, digits: int = 1, pct: bool = False) -> str:
            return _fmt(mean.get(key), std.get(key), n, pct=pct, digits=digits)  # noqa: B023

        chance = mean.get("loss_chance")
        loss = cell("final_loss", 2) + (f" ({chance:.2f})" if chance else "")
        lines.append(
            f"| {m['method']} | {flag[m['local']]} | {flag[m['zca']]} | {loss} | "
            f"{cell('top1', 2)} | {cell('proj_effective_rank_eigenvalues')} | "
            f"{cell('proj_mean_cosine', 3)} | {cell('effective_rank_eigenvalues')} | "
            f"{cell('effective_rank')} | {cell('dense_effective_rank_eigenvalues')} | "
            f"{cell('alpha', 2)} | {cell('cosine_mean', 3)} | {cell('mean_dice', 1, True)} |"
        )
    lines += [
        "",
        "Per-organ Dice (%):",
        "",
        "| Method | " + " | ".join(organs) + " |",
        "|---|" + "--:|" * len(organs),
    ]
    for m in methods.values():
        cells = [
            _fmt(m["mean"].get(f"dice/{o}"), m["std"].get(f"dice/{o}"), m["seeds"], pct=True)
            for o in organs
        ]
        lines.append(f"| {m['method']} | " + " | ".join(cells) + " |")
    px = SimilarityResult.from_dict(results["pixels"])
    lines += [
        "",
        f"Pixel-space cosine similarity of the slices: mean {px.mean_cosine:.3f} — CT slices look alike, the "
        "regime in which the paper observes collapse.",
        "",
        "![global spectra](spectra_global.png)",
        "![dense spectra](spectra_dense.png)",
        "![Dice per organ](dice_per_organ.png)",
        "![similarity](similarity.png)",
        "![backbone effective rank during pretraining](effective_rank_backbone.png)",
        "![projector effective rank during pretraining](effective_rank_projector.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
