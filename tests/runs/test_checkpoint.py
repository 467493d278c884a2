from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from collapsekit.errors import CheckpointError
from collapsekit.runs.checkpoint import (
    load_checkpoint,
    remove_stale_temp_files,
    rng_state,
    safe_torch_load,
    save_checkpoint,
    set_rng_state,
)


def _ckpt(v: float) -> dict:
    return {
        "format": "collapsekit",
        "version": 1,
        "w": torch.full((3,), v),
        "step": 7,
        "cfg": {"a": [1, 2]},
    }


def test_roundtrip_exact(tmp_path: Path) -> None:
    p = save_checkpoint(_ckpt(1.5), tmp_path / "c.pt")
    obj = load_checkpoint(p)
    assert torch.equal(obj["w"], torch.full((3,), 1.5))
    assert obj["step"] == 7 and obj["cfg"] == {"a": [1, 2]}
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


def test_failed_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = save_checkpoint(_ckpt(1.0), tmp_path / "c.pt")

    def boom(obj, f, *a, **k):  # crash half-way through writing the new file
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(_ckpt(2.0), p)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(p)["w"], torch.full((3,), 1.0))
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]


def test_sigkill_during_write_leaves_loadable(tmp_path: Path) -> None:
    """SIGKILL while a new checkpoint is being written: the file still loads as the old or a
    complete new one, and the half-written data was only ever in a temporary file.

    The kill is sent once a temporary file of a write in progress exists (polled), and the test
    requires that one was left behind, i.e. that the child really died mid-write; a writer that
    wrote ``c.pt`` in place (no temporary file) fails the wait, one that published torn data
    fails the load.
    """
    import time

    p = tmp_path / "c.pt"
    save_checkpoint(_ckpt(1.0), p)
    # A child rewrites a large (64 MB) checkpoint in a loop; kill it mid-write with SIGKILL.
    code = (
        "import torch,sys; from collapsekit.runs.checkpoint import save_checkpoint\n"
        "big={'format':'collapsekit','version':1,'w':torch.arange(16_000_000,dtype=torch.float32)}\n"
        "print('ready', flush=True)\n"
        "while True: save_checkpoint(big, sys.argv[1])\n"
    )
    killed_mid_write = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", code, str(p)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while not any(t.stat().st_size > 0 for t in tmp_path.glob(".c.pt.*.tmp")):
            assert time.monotonic() < deadline, "no temporary file: is the write atomic?"
            time.sleep(0.001)
        proc.kill()
        proc.wait()
        left = list(tmp_path.glob(".c.pt.*.tmp"))
        killed_mid_write += bool(left)
        obj = load_checkpoint(p)  # either the old or a complete new one, never torn
        if obj["w"].shape == (3,):
            assert torch.equal(obj["w"], torch.full((3,), 1.0))
        else:
            assert torch.equal(obj["w"], torch.arange(16_000_000, dtype=torch.float32))
        assert sorted(remove_stale_temp_files(tmp_path)) == sorted(left)  # leftovers cleaned up
        if killed_mid_write:
            break
    assert killed_mid_write, "the child was never killed while a write was in progress"


def test_refuses_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"format": "collapsekit", "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="would run code"):
        safe_torch_load(p)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip file at all"])
def test_corrupt_files(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        safe_torch_load(p)


def test_truncated(tmp_path: Path) -> None:
    p = save_checkpoint(_ckpt(1.0), tmp_path / "c.pt")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(p)


def test_not_ours_and_newer_version(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1)}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="not a collapsekit"):
        load_checkpoint(tmp_path / "a.pt")
    torch.save({"format": "collapsekit", "version": 99}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_roundtrip_through_file(tmp_path: Path) -> None:
    save_checkpoint({"format": "collapsekit", "version": 1, "rng": rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(2), random.random())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (torch.rand(3), np.random.rand(2), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]
