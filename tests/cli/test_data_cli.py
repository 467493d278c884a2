"""``collapsekit data``: phantom + check round trip, and every bad input exits 2 naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data import clear_cache

runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def _btcv(
    root: Path, image: np.ndarray | None = None, label: np.ndarray | None = None
) -> tuple[Path, Path]:
    """A one-case BTCV json layout; returns (image path, label path)."""
    img = _save(
        root / "imagesTr/img0001.nii.gz",
        np.full((8, 8, 4), 40, np.int16) if image is None else image,
    )
    lab = _save(
        root / "labelsTr/label0001.nii.gz",
        np.zeros((8, 8, 4), np.uint8) if label is None else label,
    )
    doc = {
        "training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}],
        "validation": [],
    }
    (root / "dataset_0.json").write_text(json.dumps(doc))
    return img, lab


def _check(*args: str):
    return runner.invoke(app, ["data", "check", *args])


def _one_line(output: str) -> str:
    """The single error line (a progress bar may precede it); no traceback."""
    assert "Traceback" not in output
    lines = [x for x in output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


def test_phantom_then_check_json(tmp_path):
    out = tmp_path / "p"
    r = runner.invoke(
        app,
        [
            "data",
            "phantom",
            str(out),
            "--cases",
            "3",
            "--size",
            "32",
            "--slices",
            "8",
            "--seed",
            "1",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 3 phantom cases (btcv layout)" in r.output
    assert (out / "dataset_0.json").is_file() and (out / "labelsTr/label0003.nii.gz").is_file()
    r = _check("--dataset", "btcv", "--data-dir", str(out), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["dataset"] == "btcv"
    assert report["volumes"] == {"training": 2, "validation": 1, "test": 0}
    assert report["slices"]["total"] == sum(
        report["slices"][k] for k in ("training", "validation", "test")
    )
    assert 6 in report["labels"] and set(report["labels"]) <= set(range(1, 14))
    assert report["shape"] == {"min": [32, 32, 8], "max": [32, 32, 8]}


def test_check_table_phantom():
    r = _check("--dataset", "phantom", "--quiet")
    assert r.exit_code == 0, r.output
    for word in (
        "training",
        "validation",
        "usable slices",
        "liver",
        "spacing (mm): [3.125, 3.125, 3.125]",
    ):
        assert word in r.output


def test_phantom_abdomenct1k_layout(tmp_path):
    out = tmp_path / "a"
    r = runner.invoke(
        app,
        [
            "data",
            "phantom",
            str(out),
            "--layout",
            "abdomenct1k",
            "--cases",
            "2",
            "--size",
            "16",
            "--slices",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["volumes"] == {"training": 2, "validation": 0, "test": 0}
    assert (out / "Mask/Case_00002.nii.gz").is_file()


def test_phantom_refuses_non_empty_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    r = runner.invoke(
        app, ["data", "phantom", str(tmp_path), "--cases", "1", "--size", "16", "--slices", "2"]
    )
    assert r.exit_code == 2
    assert str(tmp_path) in _one_line(r.output) and "--overwrite" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bad_option_values(tmp_path):
    r = runner.invoke(app, ["data", "phantom", str(tmp_path / "x"), "--layout", "btvc"])
    assert r.exit_code == 2 and "did you mean 'btcv'" in _one_line(r.output)
    r = _check("--dataset", "folderr", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and "did you mean 'folder'" in _one_line(r.output)


def test_missing_directory(tmp_path):
    r = _check("--dataset", "btcv", "--data-dir", str(tmp_path / "absent"))
    assert r.exit_code == 2
    line = _one_line(r.output)
    assert str(tmp_path / "absent") in line and "syn3193805" in line and "dataset_0.json" in line


def test_empty_folder(tmp_path):
    r = _check("--dataset", "folder", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and str(tmp_path) in _one_line(r.output)
    r = _check("--dataset", "abdomenct1k", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and "AbdomenCT-1K-ImagePart" in _one_line(r.output)


def test_json_names_missing_file(tmp_path):
    _, lab = _btcv(tmp_path)
    lab.unlink()
    r = _check("--dataset", "btcv", "--data-dir", str(tmp_path))
    assert r.exit_code == 2
    assert str(lab) in _one_line(r.output) and "dataset_0.json" in r.output


def test_truncated_nifti(tmp_path):
    img, _ = _btcv(tmp_path)
    raw = img.read_bytes()
    img.write_bytes(raw[: len(raw) // 2])
    r = _check("--dataset", "btcv", "--data-dir", str(tmp_path))
    assert r.exit_code == 2 and str(img) in _one_line(r.output)


def test_shape_mismatch(tmp_path):
    img, lab = _btcv(tmp_path, label=np.zeros((8, 8, 3), np.uint8))
    r = _check("--dataset", "btcv", "--data-dir", str(tmp_path))
    assert r.exit_code == 2
    line = _one_line(r.output)
    assert str(lab) in line and str(img) in line and "shape" in line


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 4, 3)])
def test_2d_and_4d_volumes(tmp_path, shape):
    f = _save(tmp_path / "vol.nii.gz", np.zeros(shape, np.int16))
    r = _check("--dataset", "folder", "--data-dir", str(tmp_path))
    assert r.exit_code == 2
    line = _one_line(r.output)
    assert str(f) in line and f"{len(shape)}D volume" in line


def test_non_integer_label(tmp_path):
    lab = np.zeros((8, 8, 4), np.float32)
    lab[1, 1, 1] = 2.5
    _, lp = _btcv(tmp_path, label=lab)
    r = _check("--dataset", "btcv", "--data-dir", str(tmp_path))
    assert r.exit_code == 2
    assert str(lp) in _one_line(r.output) and "not an integer label map" in r.output


def _btcv_split(root: Path, label_value: int = 1, unlabelled_training: bool = False) -> Path:
    """A two-case BTCV json layout (one training, one validation case); returns the val label."""
    lab = np.zeros((16, 16, 4), np.uint8)
    lab[4:10, 4:10, 1:3] = 6  # liver
    bad = lab.copy()
    bad[1, 1, 1] = label_value
    _save(root / "imagesTr/img0001.nii.gz", np.full((16, 16, 4), 40, np.int16))
    _save(root / "imagesTr/img0002.nii.gz", np.full((16, 16, 4), 60, np.int16))
    _save(root / "labelsTr/label0001.nii.gz", lab)
    val_label = _save(root / "labelsTr/label0002.nii.gz", bad)
    train = {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}
    if unlabelled_training:
        del train["label"]
    doc = {
        "training": [train],
        "validation": [{"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"}],
    }
    (root / "dataset_0.json").write_text(json.dumps(doc))
    return val_label


def test_label_value_outside_the_class_set_fails_data_check_and_probe_alike(tmp_path):
    """Corrupt label maps: ``data check`` and ``probe`` refuse them with the same line."""
    _btcv_split(tmp_path, label_value=99)
    message = "validation case 'img0002': label values [99] are outside the class set"
    check = _check("--dataset", "btcv", "--data-dir", str(tmp_path))
    assert check.exit_code == 2, check.output
    assert message in _one_line(check.output)
    clear_cache()
    probe = runner.invoke(
        app, ["probe", "random:resnet18", "--dataset", "btcv", "--data-dir", str(tmp_path), "-q"]
    )
    assert probe.exit_code == 2, probe.output
    assert message in _one_line(probe.output)


def test_data_check_gives_the_probes_verdict_on_the_splits(tmp_path):
    """A json entry without "label" is valid data (pretraining reads it) but the probe cannot use
    the splits: ``data check`` says so with the probe's own message."""
    _btcv_split(tmp_path, unlabelled_training=True)
    message = "training case 'img0001' has no label map"
    check = _check("--dataset", "btcv", "--data-dir", str(tmp_path), "--json")
    assert check.exit_code == 0, check.output
    seg = json.loads(check.output)["segmentation"]
    assert seg["usable"] is False and message in seg["reason"]
    table = _check("--dataset", "btcv", "--data-dir", str(tmp_path))
    assert "probe / finetune: not usable:" in table.output and message in table.output
    clear_cache()
    probe = runner.invoke(
        app, ["probe", "random:resnet18", "--dataset", "btcv", "--data-dir", str(tmp_path), "-q"]
    )
    assert probe.exit_code == 2 and message in _one_line(probe.output)


def test_data_check_passes_what_the_probe_accepts(tmp_path):
    _btcv_split(tmp_path)
    r = _check("--dataset", "btcv", "--data-dir", str(tmp_path), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["labels"] == [1, 6]
    assert json.loads(r.output)["segmentation"] == {"usable": True, "reason": None}
