"""``--resume`` policy and one writer per run (issue 22, items 5 and 6).

Unit tests of :func:`~collapsekit.train.resume.plan_resume`, then real runs: a finished run is left
byte for byte as it was, conflicting flags are refused naming each, runtime settings may change
and are reported, ``--steps`` extends; and a second ``collapsekit train`` on the ``--out`` of a
real training process is refused in one line naming the first, whose metrics stay its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.errors import ConfigError
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.train.config import TrainConfig, config_from_dict, config_to_dict
from collapsekit.train.resume import explicit_fields, given_settings, plan_resume

SAVED = config_to_dict(config_from_dict({}, batch_size=8, image_size=32, num_workers=0, steps=6))


def test_plan_keeps_saved_settings_that_were_not_given() -> None:
    plan = plan_resume(SAVED, 3, 6, {})
    assert plan.config == config_from_dict(SAVED) and plan.changes == ()
    assert plan.config.num_workers == 0  # the default --workers 2 no longer replaces it
    assert plan.step == 3 and plan.total_steps == 6 and not plan.already_finished


def test_plan_refuses_every_conflicting_setting_by_name() -> None:
    with pytest.raises(ConfigError) as err:
        plan_resume(SAVED, 3, 6, {"batch_size": 16, "image_size": 32, "model.method": "mocov2"})
    assert str(err.value) == (
        "--resume continues a run with its saved settings; these differ: batch_size 16 (the run "
        "has 8); model.method 'mocov2' (the run has 'local+zca'). Drop them, or start a new run "
        "with another --out"
    )


def test_plan_reports_runtime_changes_and_drops_the_old_stop_after() -> None:
    saved = {**SAVED, "stop_after": 3}
    plan = plan_resume(saved, 3, 6, {"num_workers": 2, "device": "cpu", "checkpoint_every": 0})
    assert plan.changes == (
        "num_workers: 2 for this session (the run had 0)",
        "device: 'cpu' for this session (the run had 'auto')",
    )
    assert plan.config.num_workers == 2 and plan.config.stop_after is None


def test_plan_finished_extended_or_shortened() -> None:
    assert plan_resume(SAVED, 6, 6, {}).already_finished
    assert plan_resume(SAVED, 6, 6, {"steps": 6}).already_finished
    longer = plan_resume(SAVED, 6, 6, {"steps": 10})
    assert not longer.already_finished and longer.total_steps == longer.config.steps == 10
    assert longer.changes == ("schedule extended from 6 to 10 steps",)
    by_epochs = config_to_dict(config_from_dict({}, epochs=2))
    assert plan_resume(by_epochs, 8, 8, {"epochs": 3}).total_steps == 12
    with pytest.raises(ConfigError, match="has trained 5 steps already; a schedule of 4 steps"):
        plan_resume(SAVED, 5, 6, {"steps": 4})


def test_given_settings_and_explicit_fields(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("batch_size = 8\n[model]\nqueue_size = 64\n")
    flags = {"num_workers": None, "seed": 3, "model": {"method": None, "arch": "resnet34"}}
    assert given_settings(flags, cfg) == {
        "batch_size": 8,
        "model.queue_size": 64,
        "seed": 3,
        "model.arch": "resnet34",
    }
    assert explicit_fields(TrainConfig()) == {}
    assert explicit_fields(config_from_dict({}, seed=4)) == {"seed": 4}


# --- real runs ---------------------------------------------------------------------------------

TINY = "phantom_cases = 4\nphantom_size = 32\nphantom_slices = 6\nmonitor_samples = 12\nfinal_samples = 0\n[model]\nqueue_size = 16\nlocal_queue_size = 64\n"
runner = CliRunner()


def _train(cfg: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        ["train", "--config", str(cfg), "--batch-size", "8", "--image-size", "32", "--workers",
         "0", "--device", "cpu", "--out", str(out), *extra],
    )  # fmt: skip


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}


@pytest.mark.slow  # ~15 s
def test_resume_of_a_finished_run_conflicts_runtime_and_extension(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "--config", str(cfg), "--steps", "2", "--batch-size", "8",
                              "--image-size", "32", "--workers", "0", "--device", "cpu",
                              "--out", str(run)])  # fmt: skip
    assert res.exit_code == 0, res.output
    before = _snapshot(run)

    # finished: exit 0, one line, nothing rewritten (not config.toml, not the spectrum)
    res = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert f"run already finished at step 2; nothing rewritten in {run}" in res.output
    assert _snapshot(run) == before

    # explicit training flags that differ: refused, each named; nothing rewritten
    res = runner.invoke(app, ["train", "--resume", "--out", str(run), "--method", "mocov2",
                              "--batch-size", "16", "--image-size", "64"])  # fmt: skip
    assert res.exit_code == 2, res.output
    (line,) = [x for x in res.output.splitlines() if x.strip()]
    assert line.startswith("error: --resume continues a run with its saved settings; these differ:")
    for name in ("batch_size 16 (the run has 8)", "image_size 64 (the run has 32)",
                 "model.method 'mocov2' (the run has 'local+zca')"):  # fmt: skip
        assert name in res.output
    assert _snapshot(run) == before

    # the same values are no conflict; --steps extends; a runtime change is printed
    res = _train(cfg, run, "--resume", "--steps", "4", "--workers", "0", "--device", "auto")
    assert res.exit_code == 0, res.output
    assert "resume: device: 'auto' for this session (the run had 'cpu')" in res.output
    assert "resume: schedule extended from 2 to 4 steps" in res.output
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["total_steps"] == 4 and len(ckpt["losses"]) == 4
    assert ckpt["config"]["num_workers"] == 0  # saved, not the default 2


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "COLLAPSEKIT_PROGRESS_SECONDS": "0"}  # fmt: skip


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "collapsekit", "train", "--config", str(cfg), "--steps", "400",
            "--batch-size", "8", "--image-size", "32", "--workers", "0", "--device", "cpu",
            "--out", str(out), *extra]  # fmt: skip


@pytest.mark.slow  # one real process, ~10 s
def test_second_train_process_on_one_out_is_refused(tmp_path: Path) -> None:
    """The second ``collapsekit train`` runs in this (pytest's) process: the lock is an flock on
    the directory, held per open file, so this process is refused like any other; it is refused
    before it loads any data, while the first keeps training."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    first = subprocess.Popen(_cmd(cfg, run), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert first.stderr is not None
        for line in first.stderr:  # a progress line of step 1: the first holds the run
            if line.startswith("train "):
                break
        second = _train(cfg, run, "--steps", "400", "--overwrite")
        assert first.poll() is None, "the first run ended before the second tried"
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert second.exit_code == 2, second.output[-3000:]
    errors = [x for x in second.stderr.splitlines() if x.startswith("error")]
    assert errors and errors[0].startswith(
        f"error: {run} is in use by another training process (PID {first.pid}: "
    ), second.output[-3000:]
    assert len(errors) == 1 and "Traceback" not in second.output
    # refused before its data load (a plain progress line "loading volumes ..." ends each load)
    assert "loading" not in second.stderr, second.stderr[-3000:]
    assert first.returncode == 143, err[-3000:]  # stopped cleanly by our SIGTERM, checkpointed
    ckpt = load_checkpoint(run / "checkpoint.pt")
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one run's records only
    assert ckpt["step"] >= 1


@pytest.mark.slow  # ~8 s
def test_out_with_a_tilde_is_the_home_directory(tmp_path: Path, monkeypatch) -> None:
    """Issue 22, item 12: a quoted '~/x' created a literal ./~ directory."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY)
    res = runner.invoke(app, ["train", "--config", str(cfg), "--steps", "1", "--batch-size", "8",
                              "--image-size", "32", "--workers", "0", "--device", "cpu",
                              "--out", "~/x", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (home / "x" / "checkpoint.pt").is_file()
    assert list(cwd.iterdir()) == []
