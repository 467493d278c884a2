"""``train(..., tensorboard=True)`` / ``collapsekit train --tensorboard``: event files read back
with TensorBoard's own EventAccumulator equal metrics.jsonl."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collapsekit.train.config import config_from_dict
from collapsekit.train.loop import train
from collapsekit.train.tensorboard import tensorboard_tag

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TINY = dict(
    # the schedule these tests were written for (MoCo's linear rule, no warm-up; the defaults
    # before issue 19): lr 0.03 amplifies float rounding between code paths past the tolerances
    lr=0.03 * 4 / 256,
    warmup_steps=0,
    image_size=32,
    batch_size=4,
    phantom_cases=4,
    phantom_size=32,
    phantom_slices=6,
    monitor_samples=12,
    final_samples=0,
    num_workers=0,
)


def _events(log_dir: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    return acc


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_events_equal_metrics(log_dir: Path, records: list[dict]) -> None:
    acc = _events(log_dir)
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for field, v in r.items():
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            if field not in ("step", "steps") and numeric and math.isfinite(v):
                expected.setdefault(tensorboard_tag(field), []).append((r["step"], v))
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        # event files store float32
        np.testing.assert_array_equal(
            np.float32([v for _, v in got]), np.float32([v for _, v in points]), err_msg=tag
        )
    # one spectrum figure per monitor step
    monitored = [r["step"] for r in records if "backbone/effective_rank_lambda" in r]
    assert [e.step for e in acc.Images("spectrum")] == monitored
    assert all(e.encoded_image_string.startswith(b"\x89PNG") for e in acc.Images("spectrum"))


@pytest.mark.slow  # ~6 s: a short training and a resumed one
def test_scalars_and_figures_equal_metrics_jsonl(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {}, **TINY, steps=6, monitor_every=2, model={"queue_size": 16, "method": "local"}
    )
    res = train(cfg, tmp_path / "run", tensorboard=True)
    records = _records(res.run_dir)
    # a 6-step run logs every step; the monitor's spaces every monitor_every = 2 steps
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "backbone/alpha" in r] == [2, 4, 6]
    # tags are the glossary's keys; training scalars under train/
    assert tensorboard_tag("loss_local") == "train/loss_local"
    assert tensorboard_tag("top1_in_batch") == "train/top1_in_batch"
    assert tensorboard_tag("backbone/effective_rank_lambda") == "backbone/effective_rank_lambda"
    assert tensorboard_tag("projector/mean_cosine") == "projector/mean_cosine"
    assert tensorboard_tag("images_per_s") == "train/images_per_s"
    # keys of earlier versions map to the same tags
    assert tensorboard_tag("proj_mean_cosine") == "projector/mean_cosine"
    assert tensorboard_tag("batch_top1") == "train/top1_in_batch"
    _assert_events_equal_metrics(res.run_dir / "tb", records)
    assert _events(res.run_dir / "tb").Scalars("train/lr")[-1].value == pytest.approx(0.0)


@pytest.mark.slow  # ~6 s
def test_resumed_run_replaces_the_replayed_steps(tmp_path: Path) -> None:
    """Stopped after a monitor record but before the next checkpoint, the replayed steps' stale
    events are purged: the event files still equal metrics.jsonl of the finished run."""
    kw = dict(**TINY, steps=6, monitor_every=2, model={"queue_size": 16})
    train(config_from_dict({}, **kw, stop_after=4), tmp_path / "run", tensorboard=True)
    res = train(config_from_dict({}, **kw), tmp_path / "run", resume=True, tensorboard=True)
    assert res.finished
    _assert_events_equal_metrics(tmp_path / "run" / "tb", _records(res.run_dir))


BLOCK = """
import sys
for name in ("tensorboard", "tensorboardX", "lightning", "pytorch_lightning"):
    sys.modules[name] = None  # an import of it raises ImportError, as when not installed
"""


@pytest.mark.slow  # ~3-5 s: a fresh interpreter imports torch and the CLI
def test_cli_without_tensorboard_installed_exits_2_with_one_line(tmp_path: Path) -> None:
    code = BLOCK + (
        "from collapsekit.cli.app import main\n"
        f"sys.argv = ['collapsekit', 'train', '--tensorboard', '--steps', '1', '--out', "
        f"{str(tmp_path / 'run')!r}]\n"
        "main()\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    lines = [x for x in (p.stdout + p.stderr).splitlines() if x.strip()]
    assert lines == [
        "error: --tensorboard needs the tensorboard package, which is not installed: "
        "pip install 'collapsekit[tensorboard]'"
    ]
    assert not (tmp_path / "run").exists()  # nothing was done


@pytest.mark.slow  # ~4 s: a two-step training through the CLI
def test_cli_train_tensorboard_writes_event_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from collapsekit.cli.app import app

    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        "\n".join(f"{k} = {v}" for k, v in TINY.items()) + "\n[model]\nqueue_size = 16\n"
    )
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app, ["train", "--config", str(cfg), "--steps", "2", "--out", str(run), "--tensorboard"]
    )
    assert res.exit_code == 0, res.output
    assert f"tensorboard --logdir {run / 'tb'}" in " ".join(res.output.split())
    _assert_events_equal_metrics(run / "tb", _records(run))
