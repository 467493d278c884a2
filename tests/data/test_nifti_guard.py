"""Hostile and broken NIfTI files (issue 22, items 4 and 12): the declared size is checked before a
voxel is decompressed, the body is never inflated past what the header declares, empty volumes
and non-files are named for what they are, and a label whose affine differs from its image's is
refused. The memory tests run ``collapsekit data check`` in a subprocess under an address-space
limit (``RLIMIT_AS``), so a regression fails with a MemoryError instead of exhausting the machine.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import collapsekit
from collapsekit.data import check_dataset, discover, load_split
from collapsekit.data._nifti_guard import DEFAULT_MAX_VOXELS, MAX_VOXELS_ENV, max_voxels
from collapsekit.errors import ConfigError, DataError

ROOT = Path(collapsekit.__file__).resolve().parents[1]
#: Address-space limit of the subprocess: `data check` of a small volume peaks well below it
#: (torch + MONAI imported), and inflating 2 GiB could not fit in it.
LIMIT = int(1.5 * 2**30)
_ZEROS_MEMBER = gzip.compress(bytes(64 << 20), compresslevel=9)  # 64 MiB of zeros, ~64 KiB


def _header(shape: tuple[int, ...], dtype=np.int16) -> bytes:
    h = nib.Nifti1Header()
    h.set_data_shape(shape)
    h.set_data_dtype(dtype)
    h["vox_offset"] = 352
    h.set_sform(np.eye(4), code=1)
    return h.binaryblock + b"\0\0\0\0"  # no extensions


def write_gz(path: Path, header: bytes, body: bytes = b"", zero_mib: int = 0) -> Path:
    """A .nii.gz: ``header`` + ``body`` in one gzip member, then ``zero_mib`` MiB of zeros as
    repeated 64 MiB members (valid gzip: members concatenate), made in milliseconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(gzip.compress(header + body, compresslevel=1))
        for _ in range(zero_mib // 64):
            f.write(_ZEROS_MEMBER)
    return path


#: ``collapsekit data check`` of each data folder (a JSON list) through the CLI, all in this one
#: process (one torch + MONAI import for all of them); one JSON line per folder: the exit code,
#: stdout, stderr and the traceback of an exception that escaped the command (a bug:
#: ``python -m collapsekit`` would have printed it on stderr).
CHECK_DRIVER = """
import json, sys, traceback
from typer.testing import CliRunner
from collapsekit.cli.app import app

for data_dir in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, ["data", "check", "--dataset", "folder", "--data-dir", data_dir,
                                 "--preprocess-workers", "0", "--json"])
    stderr = r.stderr
    if r.exc_info is not None and not isinstance(r.exc_info[1], SystemExit):
        stderr += "".join(traceback.format_exception(*r.exc_info))
    print("RESULT " + json.dumps({"returncode": r.exit_code, "stdout": r.stdout, "stderr": stderr}))
"""


def _check_in_subprocess(*data_dirs: Path) -> list[SimpleNamespace]:
    """``data check`` of each folder, in one subprocess under the address-space limit."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    p = subprocess.run(
        [sys.executable, "-c", CHECK_DRIVER, json.dumps([str(d) for d in data_dirs])],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    results = [json.loads(x[7:]) for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and len(results) == len(data_dirs), p.stdout + p.stderr[-2000:]
    return [SimpleNamespace(**r) for r in results]


@pytest.fixture(scope="module")
def hostile_checks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """The two hostile files below, each alone in its folder, checked in ONE subprocess."""
    bomb, body = tmp_path_factory.mktemp("bomb"), tmp_path_factory.mktemp("body")
    # a header declaring 16384 x 16384 x 40 int16 (21 GB) over 256 MiB of compressed zeros
    write_gz(bomb / "bomb.nii.gz", _header((16384, 16384, 40)), zero_mib=256)
    # a small header (64 x 64 x 8) and its body, followed by 2 GiB of compressed zeros
    shape = (64, 64, 8)
    write_gz(body / "a.nii.gz", _header(shape), _ct_body(shape).tobytes("F"), zero_mib=2048)
    bomb_result, body_result = _check_in_subprocess(bomb, body)
    return {"bomb": (bomb, bomb_result), "body": (body, body_result)}


def _ct_body(shape: tuple[int, int, int]) -> np.ndarray:
    a = np.full(shape, -1000, dtype=np.int16)
    a[4:-4, 4:-4, :] = 40
    return a


@pytest.mark.slow
def test_gzip_bomb_header_is_refused_before_decompressing(hostile_checks):
    """The issue's reproduction, scaled down: a header declaring 16384 x 16384 x 40 int16 (21 GB)
    over 256 MiB of compressed zeros. Refused in one line, within the memory limit."""
    _, p = hostile_checks["bomb"]
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "declares 16384x16384x40 = 10,737,418,240 voxels, above the limit of" in lines[0]
    assert f"1,073,741,824 (${MAX_VOXELS_ENV})" in lines[0]


@pytest.mark.slow
def test_body_past_the_declared_size_is_never_inflated(hostile_checks):
    """A small header (64 x 64 x 8) followed by 2 GiB of compressed zeros: only the declared
    64 KiB are decompressed (a reader inflating the whole stream would exceed the 1.5 GiB
    address-space limit); the volume is read and reported."""
    shape = (64, 64, 8)
    folder, p = hostile_checks["body"]
    assert (folder / "a.nii.gz").stat().st_size < 8 << 20
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads(p.stdout)
    assert report["shape"]["max"] == list(shape) and report["slices"]["total"] == 8


def test_voxel_limit_is_configurable(tmp_path, monkeypatch):
    shape = (64, 64, 8)
    write_gz(tmp_path / "a.nii.gz", _header(shape), _ct_body(shape).tobytes("F"))
    assert max_voxels() == DEFAULT_MAX_VOXELS == 2**30
    monkeypatch.setenv(MAX_VOXELS_ENV, "32767")
    with pytest.raises(
        DataError, match=r"declares 64x64x8 = 32,768 voxels, above the limit of 32,767"
    ):
        load_split("folder", tmp_path, "all")
    monkeypatch.setenv(MAX_VOXELS_ENV, "32768")
    (v,) = load_split("folder", tmp_path, "all")
    assert v.image.shape == shape
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(ConfigError, match=r"\$COLLAPSEKIT_MAX_VOXELS must be a positive integer"):
        max_voxels()


def test_empty_volume_is_named_as_such(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 0), np.int16), np.eye(4)), tmp_path / "e.nii.gz")
    with pytest.raises(DataError, match=r"declares an empty volume of shape \(32, 32, 0\)"):
        load_split("folder", tmp_path, "all")


def _btcv(root: Path, image: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    doc = {"training": [{"image": image, "label": "labelsTr/l.nii.gz"}], "validation": []}
    (root / "dataset_0.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("kind", ["directory", "fifo", "chardev", "dangling"])
def test_non_file_listed_as_image_says_what_it_is(tmp_path, kind, nifti, ct):
    root = tmp_path / "btcv"
    nifti(root / "labelsTr" / "l.nii.gz", np.zeros((8, 8, 4), np.uint8))
    target = root / "imagesTr" / "x.nii.gz"
    target.parent.mkdir(parents=True)
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "chardev":
        target.symlink_to("/dev/zero")
    else:
        target.symlink_to(root / "gone.nii.gz")
    _btcv(root, "imagesTr/x.nii.gz")
    expected = {
        "directory": "is a directory, not a file",
        "fifo": r"is a FIFO \(named pipe\), not a file",
        "chardev": "is a character device, not a file",
        "dangling": "is a symlink to a missing file",
    }[kind]
    with pytest.raises(DataError, match=f"x.nii.gz {expected} \\(listed in"):
        discover("btcv", root)


def test_mirrored_label_is_refused_by_data_check(tmp_path, nifti, ct):
    root = tmp_path / "btcv"
    img = ct(0, (16, 16, 4))
    lab = np.zeros((16, 16, 4), np.uint8)
    lab[4:8, 4:8] = 6
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    nifti(root / "imagesTr" / "i.nii.gz", img, affine)
    mirrored = affine.copy()
    mirrored[0, 0] = 0.8
    nifti(root / "labelsTr" / "l.nii.gz", lab, mirrored)
    _btcv(root, "imagesTr/i.nii.gz")
    with pytest.raises(
        DataError,
        match=r"l.nii.gz of case i has another affine than its image \(voxel axis 0 mirrored\)",
    ):
        check_dataset("btcv", root)
    nifti(root / "labelsTr" / "l.nii.gz", lab, affine)  # same grid: fine
    assert check_dataset("btcv", root)["labels"] == [6]


def test_dataset_without_usable_slices_warns(tmp_path, nifti):
    nifti(tmp_path / "air.nii.gz", np.full((16, 16, 4), -1000, np.int16))
    report = check_dataset("folder", tmp_path)
    assert report["slices"]["total"] == 0
    (warning,) = report["warnings"]
    assert warning.startswith("no usable slice in the whole dataset")
