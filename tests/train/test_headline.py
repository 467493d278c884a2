"""One headline number: ``train``'s final spectrum is ``collapsekit spectrum RUN``'s, and the closing
lines say where each rank was measured, compare loss_global with ln(K+1), give the health verdict
and do not tell a finished run to resume. The smoke run of issue 19 writes a loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data.spec import DIAGNOSTICS_CASES, DIAGNOSTICS_SAMPLES
from collapsekit.evaluation.report import DataSpec, spectrum_analysis
from collapsekit.train.config import TrainConfig, config_from_dict
from collapsekit.train.loop import train

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
    num_workers=0,
)
TOML = "\n".join(f"{k} = {v}" for k, v in TINY.items())


def test_train_and_spectrum_default_to_the_same_set() -> None:
    assert TrainConfig().final_samples == DataSpec().samples == DIAGNOSTICS_SAMPLES
    assert DataSpec().phantom_cases == DIAGNOSTICS_CASES and DataSpec().dataset == "phantom"


@pytest.mark.slow  # builds the 48-case evaluation phantom twice (~15 s)
def test_final_spectrum_equals_collapsekit_spectrum_of_the_run(tmp_path: Path) -> None:
    cfg = config_from_dict({}, **TINY, steps=2, final_samples=96, model={"method": "zca"})
    res = train(cfg, tmp_path / "run")
    assert res.final is not None
    assert res.final.where == "96 evaluation-phantom slices, rows L2-normalised"
    assert not res.final.as_spectrum  # 96, not spectrum's default 2048 slices
    (spec,) = spectrum_analysis([str(res.run_dir)], DataSpec(samples=96))
    assert spec.n == 96 and spec.normalized
    # the same slices, the same pooled features, the same function: equal up to float rounding
    # (the run embedded them in channels_last)
    b = res.final.backbone
    assert b.effective_rank_lambda == pytest.approx(spec.effective_rank_lambda, rel=1e-4)
    assert b.effective_rank_sigma == pytest.approx(spec.effective_rank_sigma, rel=1e-4)
    assert b.rank_bound == spec.rank_bound == 95
    # spectrum.json of the run is that measurement
    stored = json.loads((res.run_dir / "spectrum.json").read_text())
    assert stored["effective_rank_lambda"] == pytest.approx(b.effective_rank_lambda)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["final"]["backbone/effective_rank_lambda"] == b.effective_rank_lambda


@pytest.mark.slow  # a 20-step training through the CLI and its event files (~20 s quiet)
def test_smoke_run_writes_a_loss_curve_and_an_honest_closing_line(tmp_path: Path) -> None:
    """Issue 19's done-when: ``train --steps 20 --tensorboard`` writes a loss curve of >= 10
    points (timed once by hand, not here: see docs/results/performance.md)."""
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TOML + "\nfinal_samples = 0\n")
    run = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--steps", "20", "--tensorboard", "--out", str(run)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    acc = event_accumulator.EventAccumulator(str(run / "tb"))
    acc.Reload()
    for tag in ("train/loss", "train/loss_global", "train/loss_local", "train/lr"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(2, 21, 2)), tag
    for tag in ("train/top1_in_batch", "train/top1_queue"):
        assert len(acc.Scalars(tag)) == 10, tag
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    text = " ".join(res.output.split())
    # the closing line compares the *global* loss with ln(K+1), and gives the verdict
    assert (
        f"loss_global {last['loss_global']:.3f} (chance ln(K+1) = {last['loss_chance']:.3f})"
        in text
    )
    assert f"health: {last['health']}" in text
    assert "held-out monitor slices, rows L2-normalised" in text
    assert "as `collapsekit spectrum` measures" not in text  # final_samples = 0: it does not
    assert "--resume" not in text  # a finished run is not told to resume
    assert f"tensorboard --logdir {run / 'tb'}" in text


@pytest.mark.slow  # a 2-step training stopped after 1 step (~5 s)
def test_a_stopped_run_is_told_how_to_resume(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TOML + "\nfinal_samples = 0\n")
    run = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--steps", "2", "--stop-after", "1", "--out", str(run)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "stopped at step 1/2" in text
    assert f"continue with: collapsekit train --resume --out {run}" in text
