"""Training and write failures: a full disk midway, ``--out`` in the way, stale temp files.

The full disk is simulated where the bytes really go: the file object ``torch.save`` writes the
checkpoint into raises ``OSError(ENOSPC)`` after some bytes, as a full filesystem does.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from collapsekit.errors import ConfigError, OutputError, TrainingError
from collapsekit.runs import checkpoint as checkpoint_module
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.train.config import TrainConfig, config_from_dict
from collapsekit.train.loop import train

TINY = dict(
    image_size=32,
    batch_size=4,
    phantom_cases=4,
    phantom_size=32,
    phantom_slices=6,
    monitor_samples=12,
    final_samples=0,
    num_workers=0,
)


def tiny(**kw) -> TrainConfig:
    return config_from_dict({}, **{**TINY, **kw}, model={"queue_size": 16})


class _FullDisk:
    """A file that accepts ``room`` bytes, then fails as a full filesystem does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        n = len(data)
        if n > self.room:
            self.f.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, good_saves: int) -> list[int]:
    """Let ``good_saves`` checkpoints through, then fail every later one after 1 KiB."""
    real_save = torch.save
    calls = [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] <= good_saves:
            return real_save(obj, f, *args, **kwargs)
        return real_save(obj, _FullDisk(f, 1024), *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    return calls


def test_disk_full_midway_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    cfg = tiny(epochs=3)
    _fill_disk_after(monkeypatch, good_saves=1)  # epoch 1's checkpoint is written, epoch 2's not
    with pytest.raises(TrainingError) as info:
        train(cfg, run)
    good = load_checkpoint(run / "checkpoint.pt")
    assert str(info.value) == (
        f"cannot write {run / 'checkpoint.pt'}: No space left on device; the last good checkpoint "
        f"{run / 'checkpoint.pt'} (step {good['step']}) is kept"
    )
    assert good["step"] == len(good["losses"]) > 0
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []  # no torn file


def test_disk_full_at_first_checkpoint_says_nothing_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    _fill_disk_after(monkeypatch, good_saves=0)
    with pytest.raises(TrainingError) as info:
        train(tiny(epochs=1), run)
    assert str(info.value) == (
        f"cannot write {run / 'checkpoint.pt'}: No space left on device; "
        "no checkpoint of this run was written yet"
    )
    assert not (run / "checkpoint.pt").exists()
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_out_is_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    with pytest.raises(OutputError) as info:
        train(tiny(epochs=1), f)
    assert str(info.value) == f"--out {f} is a file, not a run directory"
    assert f.read_text() == "mine\n"


def test_out_non_empty_without_a_run_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "spectrum.png").write_bytes(b"user's own figure")
    (out / "notes.txt").write_text("x")
    with pytest.raises(OutputError) as info:
        train(tiny(epochs=1), out)
    assert str(info.value) == (
        f"{out} is not empty and holds no run (notes.txt, spectrum.png); pass --overwrite to "
        "train into it anyway, or choose another --out"
    )
    assert (out / "spectrum.png").read_bytes() == b"user's own figure"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "spectrum.png"]
    res = train(tiny(epochs=1), out, overwrite=True)
    assert res.finished and (out / "checkpoint.pt").is_file()


def test_stale_temp_files_are_removed_at_start_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny(steps=4, stop_after=2), run)
    stale = [run / ".checkpoint.pt.abc123.tmp", run / ".checkpoint_epoch001.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"torn")
    (run / ".keep.me").write_text("not ours")
    res = train(tiny(steps=4), run, resume=True)
    assert res.finished
    assert not any(p.exists() for p in stale)
    assert (run / ".keep.me").exists()


def test_resume_requires_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nothing to resume: "):
        train(tiny(epochs=1), tmp_path / "none", resume=True)
