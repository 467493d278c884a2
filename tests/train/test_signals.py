"""SIGTERM and Ctrl-C during a real ``collapsekit train``: the step finishes, a checkpoint is written,
the exit code is 128 + the signal (143, 130), and ``--resume`` replays an uninterrupted run's losses.

stderr is a pipe here, so the CLI prints plain progress lines; ``COLLAPSEKIT_PROGRESS_SECONDS=0``
prints one per step, which tells the test that the training loop (and its handlers) is running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from collapsekit.runs.checkpoint import load_checkpoint

CONFIG = """
phantom_cases = 4
phantom_size = 32
phantom_slices = 6
monitor_samples = 12
[model]
queue_size = 32
"""
STEPS = 40


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "collapsekit", "train", "--config", str(cfg), "--steps",
            str(STEPS), "--batch-size", "8", "--image-size", "32", "--workers", "0",
            "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "COLLAPSEKIT_PROGRESS_SECONDS": "0"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_and_resume_replays(tmp_path: Path, sig: int, code: int) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(cfg, run), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # the first plain progress line: step 1 is done
        if line.startswith("train "):
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, out + err
    assert "Traceback" not in err
    ckpt = load_checkpoint(run / "checkpoint.pt")
    step = ckpt["step"]
    assert 1 <= step < STEPS and len(ckpt["losses"]) == step
    errors = [x for x in err.splitlines() if x.startswith("error: ")]
    assert errors == [
        f"error: stopped at step {step}; resume with: collapsekit train --resume --out {run}"
    ]
    assert not list(run.glob(".*.tmp"))

    resumed = subprocess.run(_cmd(cfg, run, "--resume", "-q"), cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = subprocess.run(_cmd(cfg, tmp_path / "full", "-q"), cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["losses"]
    b = load_checkpoint(run / "checkpoint.pt")["losses"]
    assert len(a) == len(b) == STEPS
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
