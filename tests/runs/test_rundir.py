"""Run directories: the naming rule and the runs/latest resolver."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from collapsekit.errors import CheckpointError
from collapsekit.runs.rundir import (
    holds_run,
    method_dirname,
    resolve_latest,
    run_dir_name,
    update_latest,
)


def test_method_dirname_and_run_name() -> None:
    assert method_dirname("local+zca") == "local_zca"
    assert method_dirname("mocov2") == "mocov2"
    when = datetime(2024, 3, 1, 12, 30, 5)
    assert run_dir_name("local+zca", "resnet18", when) == "20240301-123005-local_zca-resnet18"


def test_latest_points_at_newest_run_and_resolves(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True)
        (runs / name / "checkpoint.pt").write_bytes(b"x")
        update_latest(runs / name)
    assert os.readlink(runs / "latest") == "b"  # relative link
    assert resolve_latest(runs) == (runs / "b").resolve()
    update_latest(runs / "latest")  # via the link itself: never points at itself
    assert resolve_latest(runs) == (runs / "b").resolve()


def test_latest_only_under_a_runs_directory(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    update_latest(tmp_path / "elsewhere")
    assert not (tmp_path / "latest").exists()


def test_resolve_latest_without_a_run_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="latest/checkpoint.pt"):
        resolve_latest(tmp_path / "runs")


def test_holds_run(tmp_path: Path) -> None:
    assert holds_run(tmp_path) == []
    (tmp_path / "config.toml").write_text("")
    assert holds_run(tmp_path) == ["config.toml"]


def test_diagnostics_dir_is_inside_a_single_run_else_a_named_folder(tmp_path, monkeypatch):
    from collapsekit.runs.rundir import diagnostics_dir

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "20260101-000000-mocov2-resnet18"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "runs" / "latest").symlink_to(run.name)
    assert diagnostics_dir([str(run)]) == run / "diagnostics"
    assert diagnostics_dir([str(run / "checkpoint.pt")]) == run / "diagnostics"
    assert diagnostics_dir(["runs/latest"]) == run / "diagnostics"  # resolved, not via the link
    assert diagnostics_dir([str(run), "random:resnet18"]) == Path("diagnostics")
    assert diagnostics_dir(["emb.npy"]) == Path("diagnostics")
    assert diagnostics_dir(["random:resnet18"]) == Path("diagnostics")
    assert diagnostics_dir([str(tmp_path)]) == Path("diagnostics")  # a directory, but no run


def test_spectrum_without_out_writes_a_named_folder_not_the_cwd(tmp_path, monkeypatch):
    import numpy as np
    from typer.testing import CliRunner

    from collapsekit.cli.app import app

    monkeypatch.chdir(tmp_path)
    np.save("emb.npy", np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32))
    (tmp_path / "spectrum.png").write_bytes(b"the user's own")
    res = CliRunner().invoke(app, ["spectrum", "emb.npy", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "spectrum.png").read_bytes() == b"the user's own"
    assert sorted(p.name for p in (tmp_path / "diagnostics").iterdir()) == [
        "spectrum.json",
        "spectrum.png",
    ]


# --- issue 22: runs/latest is only ever a link collapsekit made; one process per run dir --------


@pytest.mark.parametrize("kind", ["file", "directory", "foreign_link"])
def test_latest_that_collapsekit_did_not_make_is_left_and_reported(tmp_path: Path, kind) -> None:
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    latest = runs / "latest"
    if kind == "file":
        latest.write_text("my notes\n")
    elif kind == "directory":
        latest.mkdir()
        (latest / "keep").write_text("k")
    else:
        latest.symlink_to(tmp_path)  # an absolute link the user made
    note = update_latest(runs / "a")
    assert note is not None and note.startswith(f"{latest} is ")
    assert "left as it is (it does not point at a)" in note
    if kind == "file":
        assert latest.read_text() == "my notes\n" and not latest.is_symlink()
    elif kind == "directory":
        assert (latest / "keep").read_text() == "k" and not latest.is_symlink()
    else:
        assert os.readlink(latest) == str(tmp_path)
    assert not list(runs.glob(".latest.*"))  # no temporary link left behind


def test_latest_made_by_collapsekit_is_replaced(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True)
    assert update_latest(runs / "a") is None
    assert update_latest(runs / "b") is None
    assert os.readlink(runs / "latest") == "b"


def test_run_dir_lock_is_exclusive_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from collapsekit.errors import OutputError
    from collapsekit.runs.rundir import hold_run_dir

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY);"
         " fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(OutputError) as err:
            with hold_run_dir(tmp_path):
                pass
        assert str(err.value).startswith(
            f"{tmp_path} is in use by another training process (PID {holder.pid}: "
        )
        assert "time.sleep(60)" in str(err.value)
    finally:
        holder.kill()  # a crash: the kernel releases the lock, no stale lock is left
        holder.wait()
    with hold_run_dir(tmp_path):
        pass
    with hold_run_dir(run) as held:  # creates the directory, writes no file into it
        assert held == run and run.is_dir() and list(run.iterdir()) == []
        with pytest.raises(OutputError, match="in use by another training process"):
            with hold_run_dir(run):  # a second holder, even in this process
                pass
    with hold_run_dir(run):  # released on exit
        pass
