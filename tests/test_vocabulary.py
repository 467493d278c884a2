"""One name per quantity: every output format of the diagnostics, the monitor and the figures uses
the names of collapsekit.glossary, and no quantity appears under two names."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from collapsekit.diagnostics import SpectrumAccumulator, pairwise_cosine_stats, spectrum_report
from collapsekit.glossary import LAYERS, LEGACY_KEYS, QUANTITIES, canonical_key, label
from collapsekit.monitoring import CollapseMonitor
from collapsekit.plotting import plot_rank_history, plot_similarity, plot_spectrum

NAMES = {q.name for q in QUANTITIES}
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
