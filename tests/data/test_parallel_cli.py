"""``--preprocess-workers`` and ``--cache-dir`` on the commands that load volumes."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data import clear_cache, write_phantom_dataset

runner = CliRunner()
COMMANDS = (
    ["train"],
    ["spectrum"],
    ["similarity"],
    ["probe"],
    ["finetune"],
    ["ablate"],
    ["data", "check"],
)


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_options_are_declared_with_their_range(cmd):
    out = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).output
    assert "--preprocess-workers" in out and "--cache-dir" in out and "COLLAPSEKIT_CACHE_DIR" in out
    assert re.search(r"--preprocess-workers\s+INT \[x>=0\]", out)
    if cmd == ["train"]:  # the DataLoader's option is untouched
        assert re.search(r"--workers\s+INT \[x>=0\]", out)
    bad = runner.invoke(app, [*cmd, "--preprocess-workers", "-1"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.slow
def test_data_check_in_workers_with_cache_dir(tmp_path):
    root = tmp_path / "btcv"
    write_phantom_dataset(root, cases=3, size=32, slices=8, validation=1)
    args = ["data", "check", "--dataset", "btcv", "--data-dir", str(root), "--json"]
    serial = runner.invoke(app, [*args, "--preprocess-workers", "0"])
    assert serial.exit_code == 0, serial.output
    cache = tmp_path / "cache"
    clear_cache()  # each invocation as in a fresh process
    pooled = runner.invoke(app, [*args, "--preprocess-workers", "2", "--cache-dir", str(cache)])
    assert pooled.exit_code == 0, pooled.output
    assert json.loads(pooled.stdout) == json.loads(serial.stdout)
    assert len(list(cache.glob("*.json"))) == 3
    # The environment variable names the cache too (SLURM scripts).
    clear_cache()
    again = runner.invoke(app, args, env={"COLLAPSEKIT_CACHE_DIR": str(tmp_path / "env")})
    assert again.exit_code == 0, again.output
    assert len(list((tmp_path / "env").glob("*.json"))) == 3

    # A corrupt file read by a worker: one red line naming it, exit 2, no traceback.
    (root / "imagesTr" / "img0002.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    clear_cache()
    bad = runner.invoke(app, [*args, "--preprocess-workers", "2"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    lines = [x for x in bad.output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "img0002.nii.gz" in lines[0] and "not a readable NIfTI" in lines[0]


@pytest.mark.slow
def test_progress_shows_volumes_per_second_and_eta(tmp_path):
    root = tmp_path / "btcv"
    write_phantom_dataset(root, cases=3, size=32, slices=8, validation=0)
    clear_cache()
    res = runner.invoke(
        app,
        [
            "data",
            "check",
            "--dataset",
            "btcv",
            "--data-dir",
            str(root),
            "--preprocess-workers",
            "2",
        ],
        env={"COLLAPSEKIT_PROGRESS_SECONDS": "0"},  # a plain line per advance (logs, not a tty)
    )
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("loading volumes")]
    assert [x.split()[2] for x in lines[:3]] == ["1/3", "2/3", "3/3"]
    assert all(re.search(r"vol/s=[0-9.]+ .*elapsed .* eta 0:", x) for x in lines[:2])
