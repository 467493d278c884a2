"""Every command checks its outputs before it computes: read-only, a file in the way, overwrites.

Each case asserts exit code 2, the one error line, and that no file that existed before changed.
A read-only directory is a real one: ``chmod 555`` for a normal user; as root (who ignores modes) a
read-only tmpfs is mounted, and the case skips where mounting is not allowed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import error_line
from typer.testing import CliRunner

from collapsekit.cli.app import app

runner = CliRunner()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


TINY_CFG = """
phantom_cases = 4
phantom_size = 32
phantom_slices = 6
monitor_samples = 12
[model]
queue_size = 16
"""


def _ro_reason() -> str:
    return os.strerror(errno.EACCES if os.geteuid() != 0 else errno.EROFS)


@pytest.fixture
def emb(tmp_path: Path) -> Path:
    p = tmp_path / "in" / "emb.npy"
    p.parent.mkdir()
    np.save(p, np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32))
    return p


@pytest.mark.parametrize("command", ["spectrum", "similarity"])
def test_diagnostics_refuse_read_only_out_before_computing(
    command: str, emb: Path, readonly_dir: Path
) -> None:
    res = runner.invoke(app, [command, str(emb), "--out", str(readonly_dir)])
    assert error_line(res) == f"error: cannot write to --out {readonly_dir}: {_ro_reason()}"


def test_train_refuses_read_only_out(tmp_path: Path, readonly_dir: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_CFG)
    out = readonly_dir / "run"
    res = runner.invoke(
        app, ["train", "--config", str(cfg), "--steps", "1", "--batch-size", "4",
              "--image-size", "32", "--device", "cpu", "-q", "--out", str(out)],
    )  # fmt: skip
    assert error_line(res) == (
        f"error: cannot write to run directory {out} (in {readonly_dir}): {_ro_reason()}"
    )


def test_data_phantom_refuses_read_only_out(readonly_dir: Path) -> None:
    out = readonly_dir / "phantom"
    res = runner.invoke(app, ["data", "phantom", str(out), "--cases", "2", "--size", "32"])
    assert error_line(res) == (
        f"error: cannot write to output directory {out} (in {readonly_dir}): {_ro_reason()}"
    )


@pytest.mark.parametrize("command", ["probe", "finetune"])
def test_save_predictions_read_only(command: str, readonly_dir: Path) -> None:
    res = runner.invoke(
        app,
        [command, "random:resnet18", "--save-predictions", str(readonly_dir), "--device", "cpu"],
    )
    assert error_line(res) == (
        f"error: cannot write to --save-predictions {readonly_dir}: {_ro_reason()}"
    )


@pytest.mark.parametrize("command", ["spectrum", "similarity"])
def test_diagnostics_never_replace_files_they_did_not_write(
    command: str, emb: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / f"{command}.png").write_bytes(b"user's own figure")
    before = _snapshot(out)
    res = runner.invoke(app, [command, str(emb), "--out", str(out)])
    assert error_line(res) == (
        f"error: {out / f'{command}.png'} already exists; pass --overwrite to replace, "
        "or choose another --out"
    )
    assert _snapshot(out) == before
    res = runner.invoke(app, [command, str(emb), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / f"{command}.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("command", ["spectrum", "similarity"])
def test_diagnostics_out_is_a_file(command: str, emb: Path, tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("mine")
    res = runner.invoke(app, [command, str(emb), "--out", str(f)])
    assert error_line(res) == f"error: --out {f} is a file, not a directory"
    assert f.read_text() == "mine"


def test_diagnostics_disk_full_while_writing(
    emb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    def full(self, fname, *args, **kwargs):
        fname.write(b"\x89PNG half")  # save_figure hands savefig an open temporary file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "out"
    res = runner.invoke(app, ["spectrum", str(emb), "--out", str(out)])
    assert error_line(res) == (
        f"error: cannot write {out / 'spectrum.png'}: No space left on device; "
        f"{out / 'spectrum.json'} was written"
    )
    assert sorted(p.name for p in out.iterdir()) == ["spectrum.json"]  # no torn PNG


def test_train_out_is_a_file_and_non_run_dir(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_CFG)
    base = ["train", "--config", str(cfg), "--steps", "1", "--batch-size", "4",
            "--image-size", "32", "--device", "cpu", "-q"]  # fmt: skip
    f = tmp_path / "file.txt"
    f.write_text("mine")
    assert error_line(runner.invoke(app, [*base, "--out", str(f)])) == (
        f"error: --out {f} is a file, not a run directory"
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "spectrum.png").write_bytes(b"user's")
    before = _snapshot(mine)
    assert error_line(runner.invoke(app, [*base, "--out", str(mine)])) == (
        f"error: {mine} is not empty and holds no run (spectrum.png); pass --overwrite to "
        "train into it anyway, or choose another --out"
    )
    assert _snapshot(mine) == before


@pytest.mark.parametrize(
    "args",
    [
        ["spectrum", "EMB", "--out", "~/x"],
        ["similarity", "EMB", "--out", "~/x"],
        ["data", "phantom", "~/x"],
    ],
)
def test_quoted_tilde_out_is_refused_not_created(
    args: list[str], emb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quoted ``'~/x'`` reaches the command unexpanded: refused in one line (exit 2) naming the
    expanded path, and no directory named ``~`` appears (``train --out`` expands it instead)."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [str(emb) if a == "EMB" else a for a in args])
    assert res.exit_code == 2, res.output
    home = str(Path("~/x").expanduser())
    assert error_line(res).endswith(
        f"starts with '~', which the shell did not expand (it was quoted): give the full path, e.g. {home}"
    )
    assert not (tmp_path / "~").exists()
