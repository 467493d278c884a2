"""``run_ablation(..., tensorboard=True)``: one TensorBoard run per method under ``out/tb``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from collapsekit.experiments import AblationConfig, run_ablation

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

# 4 steps, not an epoch (~15 steps of the 128-px pretraining phantom): the run's end still
# monitors and closes the metrics (the epochs override of a train budget: test_budgets.py)
TINY = dict(
    image_size=32,
    steps=4,
    batch_size=8,
    queue_size=32,
    phantom_cases=4,
    samples=64,
    probe_epochs=1,
    probe_image_size=32,
)


@pytest.mark.slow  # ~25 s: two tiny pretrainings and probes
def test_one_tensorboard_run_per_method(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    run_ablation(
        AblationConfig(methods=("mocov2", "local+zca"), overrides=TINY), out, tensorboard=True
    )
    multiplexer_runs = sorted(
        str(p.parent.relative_to(out / "tb")) for p in (out / "tb").rglob("events.out.tfevents.*")
    )
    # `tensorboard --logdir out/tb` shows these two runs, overlaid in every chart
    assert multiplexer_runs == ["local_zca/seed0", "mocov2/seed0"]
    for method in ("mocov2", "local_zca"):
        acc = event_accumulator.EventAccumulator(str(out / "tb" / method / "seed0"))
        acc.Reload()
        records = [
            json.loads(x)
            for x in (out / method / "seed0" / "metrics.jsonl").read_text().splitlines()
        ]
        monitored = [r for r in records if "backbone/effective_rank_lambda" in r]
        got = acc.Scalars("backbone/effective_rank_lambda")
        assert monitored and [e.step for e in got] == [r["step"] for r in monitored]
        np.testing.assert_array_equal(
            np.float32([e.value for e in got]),
            np.float32([r["backbone/effective_rank_lambda"] for r in monitored]),
        )
        assert "train/loss" in acc.Tags()["scalars"] and acc.Tags()["images"] == ["spectrum"]
    assert (
        "train/loss_local"
        in event_accumulator.EventAccumulator(str(out / "tb" / "local_zca" / "seed0"))
        .Reload()
        .Tags()["scalars"]
    )
