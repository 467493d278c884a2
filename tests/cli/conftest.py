"""Fixtures of the CLI tests: real read-only and full file systems."""

from __future__ import annotations

import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _umount(d: Path) -> None:
    # A file object a failed write left for the garbage collector keeps the mount busy.
    if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
        gc.collect()
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], check=False)


def _mount_tmpfs(d: Path, options: str) -> bool:
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can write into: ``chmod 555`` for a normal user; as root (who ignores
    modes) a read-only tmpfs, and the test skips where mounting is not allowed."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if not _mount_tmpfs(d, "ro,size=64k"):
        pytest.skip("running as root and cannot mount a read-only tmpfs")
    try:
        yield d
    finally:
        _umount(d)


@pytest.fixture
def full_dir(tmp_path: Path) -> Iterator[Path]:
    """A real full file system: a 64 KiB tmpfs filled by ``keep.bin``, so the first byte any
    command writes there fails with ENOSPC (needs root to mount; skips otherwise — the simulated
    ENOSPC tests in test_outputs_cli.py and tests/train/test_write_failures.py run everywhere)."""
    d = tmp_path / "full"
    d.mkdir()
    if os.geteuid() != 0 or not _mount_tmpfs(d, "size=64k"):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with open(d / "keep.bin", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 512)
            except OSError:
                pass
        yield d
    finally:
        _umount(d)
