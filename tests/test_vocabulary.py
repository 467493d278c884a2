"""One name per quantity: every output format of the diagnostics, the monitor and the figures uses
the names of collapsekit.glossary, and no quantity appears under two names."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from collapsekit.diagnostics import SpectrumAccumulator, pairwise_cosine_stats, spectrum_report
from collapsekit.glossary import LAYERS, LEGACY_KEYS, QUANTITIES, canonical_key, label
from collapsekit.monitoring import CollapseMonitor
from collapsekit.plotting import plot_rank_history, plot_similarity, plot_spectrum

ROOT = Path(__file__).resolve().parents[1]
NAMES = {q.name for q in QUANTITIES}
#: Second names of the effective ranks that human-facing text no longer uses.
OLD_RANK_NAMES = re.compile(r"[λσ]-ranks?\b")
# keys that are not quantities: provenance, shapes, containers and settings
METADATA = {
    "name",
    "n",
    "d",
    "normalized",
    "spectrum",
    "rank_tolerance",
    "pooling",
    "bounded_by_samples",
    "definitions",
    "n_samples",
    "n_pairs",
    "quantiles",
    "histogram",
    "counts",
    "bin_edges",
    "same_volume",
    "different_volume",
    "step",
    "health",
    "reasons",
    "health_space",
    "alerts",
    "spaces",
    "q05",
    "q25",
    "q50",
    "q75",
    "q95",
}


def _keys(obj: Any, skip: Iterable[str] = ("definitions", "spaces")) -> Iterator[str]:
    """Every dict key in a JSON-like object (values under ``skip`` are walked for their values
    only: ``definitions`` is keyed by quantity and ``spaces`` by space name)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            if k in skip and isinstance(v, dict):
                for inner in v.values():
                    yield from _keys(inner, skip)
            else:
                yield from _keys(v, skip)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v, skip)


def _check(keys: Iterable[str]) -> None:
    """Each key is metadata or a (layer-qualified) glossary name in its current spelling, and no
    two keys of one output name the same quantity."""
    seen: dict[str, str] = {}
    for key in set(keys):
        if key in METADATA:
            continue
        layer, _, name = key.rpartition("/")
        assert name in NAMES, f"{key!r} is not a glossary name"
        assert not layer or layer.rpartition("/")[2] in LAYERS or layer.startswith("collapse/")
        assert canonical_key(key) == key, f"{key!r} is a legacy spelling"
        assert seen.setdefault(canonical_key(key), key) == key


@pytest.fixture(scope="module")
def embeddings() -> torch.Tensor:
    return torch.randn(60, 12, generator=torch.Generator().manual_seed(0))


def test_spectrum_json_and_the_streaming_result(embeddings: torch.Tensor) -> None:
    res = spectrum_report(embeddings)
    d = json.loads(json.dumps(res.to_dict()))
    _check(_keys(d))
    assert set(d["definitions"]) <= NAMES
    acc = SpectrumAccumulator(12)
    acc.update(embeddings)
    assert set(acc.compute().to_dict()) == set(d)


def test_similarity_json(embeddings: torch.Tensor) -> None:
    res = pairwise_cosine_stats(embeddings, groups=np.arange(60) // 10)
    _check(_keys(json.loads(json.dumps(res.to_dict()))))


def test_monitor_dict_and_logged_keys(embeddings: torch.Tensor) -> None:
    net = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    mon = CollapseMonitor(net, embeddings, layers={"backbone": "1", "projector": "2"}, warn=False)
    res = mon.measure(step=3)
    d = json.loads(json.dumps(res.to_dict()))
    _check(_keys(d))
    assert set(d["spaces"]) == {"backbone", "projector"}
    # the Lightning callback logs exactly MonitorResult.scalars(prefix): collapse/{space}/{name}
    logged = res.scalars("collapse/")
    _check(logged)
    assert {k.split("/")[1] for k in logged} == {"backbone", "projector"}


def test_plot_labels_use_the_glossary_labels(embeddings: torch.Tensor) -> None:
    spec = spectrum_report(embeddings, name="e")
    _, ax = plot_spectrum(spec)
    legend = ax.get_legend().get_texts()[0].get_text()
    assert label("effective_rank_lambda") in legend and label("effective_rank_sigma") in legend
    _, ax = plot_similarity(pairwise_cosine_stats(embeddings, name="e"))
    assert label("mean_cosine") in ax.get_legend().get_texts()[0].get_text()
    from collapsekit.train.records import MetricsRecord

    row = MetricsRecord.from_dict(
        {
            **dict.fromkeys(("loss", "loss_global", "top1_queue", "top1_in_batch", "lr"), 0.5),
            **dict.fromkeys(("loss_chance", "top1_in_batch_chance", "images_per_s"), 1.0),
            "epoch": 1,
            "step": 1,
            "proj_effective_rank_eigenvalues": 3.0,  # a key of an earlier version
        }
    )
    _, ax = plot_rank_history({"r": [row]}, key="projector/effective_rank_lambda")
    assert ax.get_ylabel() == label("projector/effective_rank_lambda")
    texts = [legend, ax.get_ylabel(), ax.get_title()]
    for old in [*LEGACY_KEYS, "eff. rank", "σ-rank", "λ-rank"]:
        assert all(old not in t for t in texts), old
    plt.close("all")


TINY_TRAIN = dict(
    image_size=32,
    batch_size=4,
    phantom_cases=4,
    phantom_size=32,
    phantom_slices=6,
    monitor_samples=12,
    num_workers=0,
)


@pytest.mark.slow  # two 2-step trainings through the CLI (~10 s each)
@pytest.mark.parametrize("stop", [[], ["--stop-after", "1"]], ids=["finished", "stopped"])
def test_train_console_output_uses_the_glossary_labels(tmp_path: Path, stop: list[str]) -> None:
    """The progress and closing lines (the final spectrum of a finished run, the last monitor row
    of a stopped one) name the ranks by their glossary labels."""
    from collapsekit.cli.app import app

    cfg = tmp_path / "cfg.toml"
    settings = {**TINY_TRAIN, "final_samples": 0, "log_every": 1, "monitor_every": 1}
    cfg.write_text("\n".join(f"{k} = {v}" for k, v in settings.items()))
    args = ["train", "--config", str(cfg), "--steps", "2", *stop, "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert not OLD_RANK_NAMES.search(text), text
    lam, sigma = label("effective_rank_lambda"), label("effective_rank_sigma")
    assert f"backbone: {lam} " in text and f"projector: {lam} " in text, text
    assert f"{label('mean_cosine')} " in text, text
    assert (f"{sigma} " in text) == (not stop), text  # the final spectrum of a finished run
    assert f"{label('backbone/effective_rank_lambda')}=" in text, text  # the progress line


def _tiny_ablation_results() -> Any:
    """An :class:`AblationResults` of two methods built by hand (no training)."""
    from collapsekit.experiments import AblationConfig, AblationResults
    from collapsekit.experiments.results import MethodResult, RunSummary, SpaceSummary

    def summary(rank: float) -> RunSummary:
        space = SpaceSummary(
            effective_rank_lambda=rank, effective_rank_sigma=2 * rank, alpha=1.0, mean_cosine=0.5
        )
        return RunSummary(
            backbone=space,
            dense=space,
            projector=space,
            loss_global=1.0,
            loss_chance=2.0,
            health="healthy",
            mean_dice=0.25,
            dice={"liver": 0.25},
        )

    methods = tuple(
        MethodResult(
            method=name,
            label=name,
            local=local,
            zca=zca,
            seeds=1,
            mean=summary(rank),
            std=RunSummary(),
            per_seed=(summary(rank),),
            evals=(),
        )
        for name, local, zca, rank in (
            ("mocov2", False, False, 8.7),
            ("local+zca", True, True, 11.0),
        )
    )
    config = AblationConfig()
    pixels = pairwise_cosine_stats(torch.randn(10, 4), name="pixels")
    return AblationResults(config=config, settings=config.settings, pixels=pixels, methods=methods)


def test_ablation_table_and_report_use_the_glossary_labels(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``collapsekit ablate``'s console table and ``report.md``'s table name the ranks by their
    glossary labels (the table rendered from results built by hand, no training)."""
    from collapsekit.cli.ablate import _print_table
    from collapsekit.cli.common import console
    from collapsekit.experiments.report import report_lines

    results = _tiny_ablation_results()
    monkeypatch.setattr(console, "width", 250)  # no wrapped column headers
    _print_table(results, seeds=1)
    table = capsys.readouterr().out
    report = "\n".join(report_lines(results))
    header = next(line for line in report.splitlines() if line.startswith("| Method |"))
    for text in (table, report):
        assert not OLD_RANK_NAMES.search(text), text
    for key in ("backbone", "dense", "projector"):
        assert label(f"{key}/effective_rank_lambda") in table, table
    for key in (
        "projector/effective_rank_lambda",
        "backbone/effective_rank_lambda",
        "backbone/effective_rank_sigma",
        "dense/effective_rank_lambda",
    ):
        text = label(key)
        assert f"| {text[:1].upper() + text[1:]} |" in header, header


def _prose_pages() -> list[Path]:
    """README, CONTRIBUTING and the documentation pages; not the CHANGELOG (it records what was
    printed then) nor the measurement archives under docs/archive/."""
    docs = ROOT / "docs"
    pages = [p for p in sorted(docs.rglob("*.md")) if "archive" not in p.relative_to(docs).parts]
    pages = [p for p in pages if p.name.lower() != "changelog.md"]
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *pages]


def test_prose_names_the_ranks_by_their_glossary_labels() -> None:
    pages = _prose_pages()
    assert ROOT / "docs" / "results" / "ablation.md" in pages
    bad = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for page in pages
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if OLD_RANK_NAMES.search(line)
    ]
    assert not bad, "\n".join(bad)
