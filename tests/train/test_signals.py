"""SIGTERM and Ctrl-C during a real ``collapsekit train``: the step finishes, a checkpoint is written,
the exit code is 128 + the signal (143, 130), and ``--resume`` replays an uninterrupted run's losses.

stderr is a pipe here, so the CLI prints plain progress lines; ``COLLAPSEKIT_PROGRESS_SECONDS=0``
prints one per step, which tells the test that the training loop (and its handlers) is running.
The runs that are not signalled (the uninterrupted reference, the ``--resume`` after a signal) run
``collapsekit train`` in this (pytest's) process, single-threaded like the subprocesses: they read
and write the same files, without the seconds a new process spends importing torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.runs.checkpoint import load_checkpoint

# 24 slices a volume: an epoch is ~8 steps, so a run checkpoints and monitors at a few epoch ends
# (not every other step) and still crosses epoch boundaries after the stop and on resume
CONFIG = """
phantom_cases = 4
phantom_size = 32
phantom_slices = 24
monitor_samples = 12
final_samples = 0
[model]
queue_size = 32
"""
STEPS = 20


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "collapsekit", "train", "--config", str(cfg), "--steps",
            str(STEPS), "--batch-size", "8", "--image-size", "32", "--workers", "0",
            "--device", "cpu", "--out", str(out), *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "COLLAPSEKIT_PROGRESS_SECONDS": "0"}  # fmt: skip


def _train_here(cmd: list[str], cwd: Path) -> None:
    """``cmd`` (a ``collapsekit`` command line of :func:`_cmd`) run in this process, in ``cwd``
    and on one thread (as ``OMP_NUM_THREADS=1``); it must succeed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(cwd)
            res = CliRunner().invoke(app, cmd[3:])  # without: python -m collapsekit
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output[-3000:]


@pytest.fixture(scope="module")
def uninterrupted_losses(tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """The losses of the run without a signal (one run for both signals)."""
    tmp = tmp_path_factory.mktemp("full")
    cfg = tmp / "cfg.toml"
    cfg.write_text(CONFIG)
    _train_here(_cmd(cfg, tmp / "full", "-q"), tmp)
    return load_checkpoint(tmp / "full" / "checkpoint.pt")["losses"]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_and_resume_replays(
    tmp_path: Path, sig: int, code: int, uninterrupted_losses: list[float]
) -> None:
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

    _train_here(_cmd(cfg, run, "--resume", "-q"), tmp_path)
    a = uninterrupted_losses
    b = load_checkpoint(run / "checkpoint.pt")["losses"]
    assert len(a) == len(b) == STEPS
    assert b == pytest.approx(a, rel=1e-5, abs=1e-6)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    kids: list[int] = []
    for task in tasks.iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def _rank_of(pid: int) -> int | None:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigterm_to_one_torchrun_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """The ranks agree on the stop flag each step: a SIGTERM that reaches rank 1 only stops rank 0
    after the same step (no rank left waiting in a collective), rank 0 checkpoints, and the run
    resumes under torchrun to the end."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m"]  # fmt: skip
    proc = subprocess.Popen(
        [*launcher, *_cmd(cfg, run)[2:]], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # rank 0's first plain progress line: step 1 is done on both
        if line.startswith("train "):
            break
    ranks = {_rank_of(p): p for p in _children(proc.pid)}
    os.kill(ranks[1], signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    ckpt = load_checkpoint(run / "checkpoint.pt")
    step = ckpt["step"]
    assert 1 <= step < STEPS
    assert f"error: stopped at step {step}; resume with: collapsekit train --resume" in err
    assert "exitcode  : 143" in err  # torchrun's summary: rank 1 (and rank 0) stopped on SIGTERM

    resumed = subprocess.run([*launcher, *_cmd(cfg, run, "--resume", "-q")[2:]], cwd=tmp_path,
                             env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run / "checkpoint.pt")["step"] == STEPS


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_process_group_with_dataloader_workers(
    tmp_path: Path, sig: int, code: int
) -> None:
    """Ctrl-C in a terminal (and SLURM's SIGTERM) reach every process of the group, DataLoader
    workers too: the workers ignore it, the main process finishes the step, checkpoints and exits
    130/143 — not "DataLoader worker exited unexpectedly"."""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    cmd = [*_cmd(cfg, run)]
    cmd[cmd.index("--workers") + 1] = "2"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("train "):
            break
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "exited unexpectedly" not in err
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    errors = [x for x in err.splitlines() if x.startswith("error: ")]
    assert errors == [
        f"error: stopped at step {step}; resume with: collapsekit train --resume --out {run}"
    ]


# --- issue 22, items 10 and 11: signals while volumes load -------------------------------------

BIG = "phantom_cases = 12\nphantom_size = 128\nphantom_slices = 48\nmonitor_samples = 12\n[model]\nqueue_size = 32\n"


def _default_sigint() -> None:
    # A shell's background job (CI, a job runner) starts with SIGINT ignored, which children
    # inherit; a terminal's Ctrl-C finds Python's own handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(stream, prefix: str) -> None:
    for line in stream:
        if line.startswith(prefix):
            return
    raise AssertionError(f"no line starting with {prefix!r}")


@pytest.mark.slow
def test_sigterm_while_volumes_load_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(BIG)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*_cmd(cfg, run), "--preprocess-workers", "0"], cwd=tmp_path, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    _wait_for(proc.stderr, "loading volumes")  # the first volume is being generated
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in err
    errors = [x for x in err.splitlines() if x.startswith("error")]
    assert errors == [
        f"error: stopped by SIGTERM before the first step; nothing was written to {run}"
    ], err[-3000:]
    assert not run.exists()


@pytest.mark.slow
def test_ctrl_c_while_a_worker_pool_loads_prints_no_traceback(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: the forkserver (importing torch) and the workers
    must not print tracebacks; the command says "interrupted" and exits 130."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "collapsekit", "spectrum", "random:resnet18", "--samples", "16",
         "--device", "cpu", "--preprocess-workers", "2", "--out", str(tmp_path / "d")],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    assert proc.stderr is not None
    _wait_for(proc.stderr, "loading volumes")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert [x for x in err.splitlines() if x.strip() and not x.startswith("loading")] == [
        "interrupted"
    ], err[-3000:]


@pytest.mark.slow
def test_sigterm_in_any_command_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "collapsekit", "spectrum", "random:resnet18", "--samples", "16",
         "--device", "cpu", "--preprocess-workers", "0", "--out", str(tmp_path / "d")],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    _wait_for(proc.stderr, "loading volumes")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in err
    assert [x for x in err.splitlines() if x.strip() and not x.startswith("loading")] == [
        "stopped by SIGTERM"
    ], err[-3000:]
    assert not (tmp_path / "d").exists()
