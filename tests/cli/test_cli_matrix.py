"""Every command × {missing input, unreadable input, read-only output, full disk}: exit 2, one error
line, no traceback, and no file that existed before has changed (nor a temporary file left).

Real file systems throughout: a chmod-000 input (read through ``setpriv`` without the
DAC-override capabilities when the tests run as root, who otherwise reads anything), a read-only
tmpfs and a full 64 KiB tmpfs (see conftest.py; cases skip where mounting is not allowed). Cases
that do not apply: ``data phantom`` reads no input, ``data check`` writes no output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli_helpers import error_line
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data import clear_cache

runner = CliRunner()

TINY_CFG = """
phantom_cases = 4
phantom_size = 32
phantom_slices = 6
monitor_samples = 12
[model]
queue_size = 16
"""
TRAIN = ["--steps", "1", "--batch-size", "4", "--image-size", "32", "--device", "cpu", "-q"]
EVAL = ["--phantom-cases", "3", "--phantom-size", "32", "--phantom-slices", "4", "--epochs", "1"]
EVAL += ["--device", "cpu", "-q"]

#: command -> argv with {input}, {out} placeholders (None: the case does not apply).
INPUT_KIND = {
    "spectrum": "npy",
    "similarity": "npy",
    "train": "toml",
    "probe": "pt",
    "finetune": "pt",
    "ablate": "folder",
    "data check": "folder",
    "export": "backbone",
}
COMMANDS = {
    "spectrum": ["spectrum", "{input}", "--out", "{out}"],
    "similarity": ["similarity", "{input}", "--out", "{out}"],
    "train": ["train", "--config", "{input}", *TRAIN, "--out", "{out}/run"],
    "probe": ["probe", "{input}", *EVAL, "--save-predictions", "{out}/pred"],
    "finetune": ["finetune", "{input}", *EVAL, "--save-predictions", "{out}/pred"],
    "ablate": ["ablate", "--dataset", "folder", "--data-dir", "{input}", "--out", "{out}/abl"],
    "data check": ["data", "check", "--dataset", "folder", "--data-dir", "{input}"],
    "data phantom": ["data", "phantom", "{out}/ph", "--cases", "2", "--size", "32"],
    "export": ["export", "{input}", "{out}/backbone.pt"],
}
#: With a valid input, the output cases use these in place of {input}.
VALID_INPUT = {"probe": "random:resnet18", "finetune": "random:resnet18"}


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _write_input(kind: str, where: Path) -> Path:
    """A valid input of ``kind`` at ``where`` (a file, or a folder dataset of one volume)."""
    where.parent.mkdir(parents=True, exist_ok=True)
    if kind == "npy":
        np.save(where, np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32))
    elif kind == "toml":
        where.write_text(TINY_CFG)
    elif kind == "pt":
        where.write_bytes(b"PK\x03\x04 not really a checkpoint")
    elif kind == "backbone":
        import torch

        from collapsekit.models import build_backbone

        torch.save(build_backbone("resnet18").state_dict(), where)
    else:
        where.mkdir()
        vol = np.random.default_rng(0).integers(-200, 200, (32, 32, 6)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(where / "case1.nii.gz"))
    return where


def _input_path(kind: str, root: Path) -> Path:
    names = {"npy": "emb.npy", "toml": "c.toml", "pt": "model.pt", "backbone": "backbone.pt"}
    return root / names.get(kind, "data")


def _argv(command: str, inp: str | Path, out: Path) -> list[str]:
    return [a.format(input=inp, out=out) for a in COMMANDS[command]]


def _snapshot(*roots: Path) -> dict[str, bytes]:
    snap: dict[str, bytes] = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and os.access(p, os.R_OK) and p.stat().st_mode & 0o444:
                snap[str(p)] = p.read_bytes()
    return snap


def _temporaries(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and ".tmp" in p.name]


def _check_nothing_changed(before: dict[str, bytes], *roots: Path) -> None:
    after = _snapshot(*roots)
    assert {k: v for k, v in after.items() if k in before} == before
    for root in roots:
        assert _temporaries(root) == []


@pytest.mark.parametrize("command", [c for c in COMMANDS if c in INPUT_KIND])
def test_missing_input(command: str, tmp_path: Path) -> None:
    missing = _input_path(INPUT_KIND[command], tmp_path / "nowhere")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("mine")
    before = _snapshot(tmp_path)
    line = error_line(runner.invoke(app, _argv(command, missing, tmp_path / "out")))
    assert str(missing) in line or "random:" in line
    _check_nothing_changed(before, tmp_path)


def _unreadable_argv() -> list[str]:
    """Run as a user who cannot read a mode-000 file (root drops CAP_DAC_OVERRIDE via setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: root reads mode-000 files")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]


#: Runs every command of a JSON list of argvs through the CLI in this one process (one torch +
#: MONAI import for all of them, not one each), a fresh in-memory cache each, and prints one
#: JSON object per command: its exit code, its stderr, and the traceback of an exception that
#: escaped the command (a bug: ``python -m collapsekit`` would have printed it on stderr).
UNREADABLE_DRIVER = """
import json, sys, traceback
from typer.testing import CliRunner
from collapsekit.cli.app import app
from collapsekit.data import clear_cache

for argv in json.loads(sys.argv[1]):
    clear_cache()
    r = CliRunner().invoke(app, argv)
    stderr = r.stderr
    if r.exc_info is not None and not isinstance(r.exc_info[1], SystemExit):
        stderr += "".join(traceback.format_exception(*r.exc_info))
    print("RESULT " + json.dumps({"exit_code": r.exit_code, "stderr": stderr}), flush=True)
"""


@pytest.fixture(scope="module")
def unreadable_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each command run on its own mode-000 input (a file, or the one volume of a folder), all in
    ONE subprocess without the DAC-override capabilities: each input and output under its own
    directory, snapshotted before the run."""
    setup = [*_unreadable_argv(), sys.executable, "-c", UNREADABLE_DRIVER]
    runs: dict[str, dict] = {}
    for command, kind in INPUT_KIND.items():
        root = tmp_path_factory.mktemp(command.replace(" ", "_"))
        inp = _write_input(kind, _input_path(kind, root))
        out = root / "out"
        out.mkdir()
        locked = inp / "case1.nii.gz" if kind == "folder" else inp
        runs[command] = {
            "root": root,
            "locked": locked,
            "argv": _argv(command, inp, out),
            "before": _snapshot(root),
        }
    for run in runs.values():
        run["locked"].chmod(0o000)
    try:
        done = subprocess.run(
            [*setup, json.dumps([run["argv"] for run in runs.values()])],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "300"},
        )
    finally:
        for run in runs.values():
            run["locked"].chmod(0o644)
    results = [
        json.loads(x.removeprefix("RESULT "))
        for x in done.stdout.splitlines()
        if x.startswith("RESULT ")
    ]
    assert done.returncode == 0 and len(results) == len(runs), done.stdout + done.stderr
    for run, result in zip(runs.values(), results, strict=True):
        run.update(result)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in COMMANDS if c in INPUT_KIND])
def test_unreadable_input(command: str, unreadable_runs: dict[str, dict]) -> None:
    run = unreadable_runs[command]
    assert run["exit_code"] == 2, run["stderr"]
    assert "Traceback" not in run["stderr"]
    lines = [x for x in run["stderr"].splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, run["stderr"]
    assert str(run["locked"]) in lines[0] and "ermission denied" in lines[0]
    _check_nothing_changed(run["before"], run["root"])


def _with_valid_input(command: str, tmp_path: Path) -> str:
    if command in VALID_INPUT:
        return VALID_INPUT[command]
    if command not in INPUT_KIND:
        return ""
    kind = INPUT_KIND[command]
    return str(_write_input(kind, _input_path(kind, tmp_path / "in")))


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "data check"])
def test_read_only_output(command: str, tmp_path: Path, readonly_dir: Path) -> None:
    inp = _with_valid_input(command, tmp_path)
    before = _snapshot(tmp_path)
    line = error_line(runner.invoke(app, _argv(command, inp, readonly_dir)))
    assert line.startswith("error: cannot write to ") and str(readonly_dir) in line
    assert os.strerror(30) in line or os.strerror(13) in line
    _check_nothing_changed(before, tmp_path)


FULL_KEPT = {
    "spectrum": "nothing was written",
    "similarity": "nothing was written",
    "train": "no checkpoint of this run was written yet",
    "probe": "0 prediction files were written",
    "finetune": "0 prediction files were written",
    "ablate": "nothing was written",
    "data phantom": "0 of 2 cases were written",
    "export": "nothing was written",
}


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(c, marks=pytest.mark.slow) if c in ("probe", "finetune") else c
        for c in COMMANDS
        if c != "data check"
    ],
)
def test_full_disk(command: str, tmp_path: Path, full_dir: Path) -> None:
    inp = _with_valid_input(command, tmp_path)
    before = _snapshot(tmp_path)
    line = error_line(runner.invoke(app, _argv(command, inp, full_dir)))
    assert line.startswith(f"error: cannot write {full_dir}/"), line
    assert f": {os.strerror(28)}; {FULL_KEPT[command]}" in line
    _check_nothing_changed(before, tmp_path)
    written = [p for p in full_dir.rglob("*") if p.is_file() and p.name != "keep.bin"]
    assert all(p.stat().st_size == 0 for p in written) and not written, written
