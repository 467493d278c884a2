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
