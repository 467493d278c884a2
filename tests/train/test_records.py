"""Typed rows of metrics.jsonl: glossary keys, round trip, rows of earlier versions, the verdict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from collapsekit.errors import InputError
from collapsekit.train.records import MetricsRecord, SpaceRecord, read_metrics

# a monitor row as collapsekit 0.x wrote it (before the glossary)
OLD_ROW = {
    "epoch": 2,
    "step": 240,
    "loss": 5.0,
    "loss_global": 4.0,
    "loss_local": 2.0,
    "loss_chance": math.log(257),
    "top1": 0.6,
    "batch_top1": 0.5,
    "batch_top1_chance": 1 / 32,
    "lr": 0.01,
    "images_per_s": 40.0,
    "effective_rank": 30.0,
    "rankme": 31.0,
    "effective_rank_lambda": 9.0,
    "alpha": 1.2,
    "alpha_r2": 0.9,
    "std_l2": 0.02,
    "mean_cosine": 0.3,
    "rank_bound": 511,
    "proj_effective_rank": 20.0,
    "proj_effective_rank_lambda": 11.0,
    "proj_std_l2": 0.05,
    "proj_mean_cosine": 0.2,
}


def test_a_row_of_an_earlier_version_loads_under_the_glossary_names() -> None:
    row = MetricsRecord.from_dict(OLD_ROW)
    assert (row.top1_queue, row.top1_in_batch, row.top1_in_batch_chance) == (0.6, 0.5, 1 / 32)
    assert row.steps == 1 and row.health == "unknown"
    assert row.backbone is not None and row.projector is not None
    assert row.backbone.effective_rank_lambda == 9.0
    assert row.backbone.effective_rank_sigma == 30.0 and row.backbone.rankme == 31.0
    assert row.backbone.rank_bound == 511
    assert row.projector.effective_rank_lambda == 11.0 and row.projector.mean_cosine == 0.2
    assert math.isnan(row.projector.alpha)  # not logged for the projector then
    # and reads through get() under either spelling
    assert row.get("projector/mean_cosine") == row.get("proj_mean_cosine") == 0.2
    assert row.get("effective_rank_lambda") is None  # unqualified: not a row field now
    assert row.get("backbone/effective_rank_lambda") == 9.0


def test_keys_are_the_field_paths_and_round_trip() -> None:
    space = SpaceRecord(9.0, 30.0, 31.0, 1.2, 0.9, 0.02, 0.3, 511)
    row = MetricsRecord(
        epoch=1,
        step=10,
        steps=10,
        loss=5.0,
        loss_global=4.0,
        loss_local=2.0,
        top1_queue=0.6,
        top1_in_batch=0.5,
        lr=0.01,
        loss_chance=math.log(257),
        top1_in_batch_chance=1 / 32,
        images_per_s=40.0,
        backbone=space,
    )
    d = row.to_dict()
    assert d["backbone/effective_rank_lambda"] == 9.0 and "projector/mean_cosine" not in d
    assert "backbone" not in d and d["top1_in_batch"] == 0.5
    assert MetricsRecord.from_dict(json.loads(json.dumps(d))) == row


def test_health_verdict_of_a_row() -> None:
    base = MetricsRecord.from_dict(OLD_ROW)
    # loss_global 4.0 <= 0.9 ln(257) = 4.99 and top-1 0.5 >= 2/32: healthy
    assert base.judged().health == "healthy"
    # at chance: not learning
    stuck = MetricsRecord.from_dict({**OLD_ROW, "loss_global": math.log(257), "batch_top1": 0.03})
    assert stuck.judged().health == "not learning"
    # a projector that maps everything to one point: collapsed
    collapsed = MetricsRecord.from_dict({**OLD_ROW, "proj_mean_cosine": 0.99})
    assert collapsed.judged().health == "collapsed"
    assert "mean_cosine 0.990 >= 0.95" in str(collapsed.verdict())


def test_read_metrics_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(OLD_ROW) + "\n" + json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(InputError, match=r"metrics.jsonl:2: not a metrics.jsonl row"):
        read_metrics(path)
    with pytest.raises(InputError, match="no metrics.jsonl"):
        read_metrics(tmp_path / "missing.jsonl")
