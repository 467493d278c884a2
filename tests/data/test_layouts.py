"""Dataset layouts discovered from files the tests write: counts, pairing, error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from collapsekit.data import BTCV_LABELS, DATASETS, discover
from collapsekit.data.layouts import BTCV_RAW_VALIDATION
from collapsekit.errors import ConfigError, DataError, LayoutError

TINY = np.zeros((4, 4, 2), dtype=np.int16)


def test_constants():
    assert DATASETS == ("phantom", "btcv", "abdomenct1k", "folder")
    assert (
        BTCV_LABELS[1] == "spleen"
        and BTCV_LABELS[6] == "liver"
        and BTCV_LABELS[13] == "left_adrenal"
    )
    assert len(BTCV_LABELS) == 13
    assert BTCV_RAW_VALIDATION == frozenset({35, 36, 37, 38, 39, 40})


def test_btcv_json(tmp_path, nifti):
    for i in (1, 2, 3):
        nifti(tmp_path / f"imagesTr/img{i:04d}.nii.gz", TINY)
        nifti(tmp_path / f"labelsTr/label{i:04d}.nii.gz", TINY.astype(np.uint8))
    nifti(tmp_path / "imagesTs/img0061.nii.gz", TINY)
    doc = {
        "numTraining": 99,  # stale in the real file: must not be trusted
        "labels": {"0": "background"},
        "training": [
            {"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"},
            {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"},
        ],
        "validation": [{"image": "imagesTr/img0003.nii.gz", "label": "labelsTr/label0003.nii.gz"}],
        "test": ["imagesTs/img0061.nii.gz"],
    }
    (tmp_path / "dataset_0.json").write_text(json.dumps(doc))
    index = discover("btcv", tmp_path)
    assert index.counts() == {"training": 2, "validation": 1, "test": 1}
    assert [r.case_id for r in index.training] == ["img0002", "img0001"]  # json order kept
    assert index.training[0].image == tmp_path / "imagesTr/img0002.nii.gz"
    assert index.training[0].label == tmp_path / "labelsTr/label0002.nii.gz"
    assert (
        index.test[0].image == tmp_path / "imagesTs/img0061.nii.gz" and index.test[0].label is None
    )
    assert [r.case_id for r in index.split("all")] == ["img0002", "img0001", "img0003", "img0061"]


def test_btcv_json_missing_file(tmp_path, nifti):
    nifti(tmp_path / "imagesTr/img0001.nii.gz", TINY)
    doc = {"training": [{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}]}
    (tmp_path / "dataset_0.json").write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=r"label0001\.nii\.gz does not exist \(listed in .*dataset_0\.json"
    ):
        discover("btcv", tmp_path)


def test_btcv_json_invalid(tmp_path):
    (tmp_path / "dataset_0.json").write_text("{not json")
    with pytest.raises(LayoutError, match="dataset_0.json is not valid JSON"):
        discover("btcv", tmp_path)
    (tmp_path / "dataset_0.json").write_text(json.dumps({"validation": []}))
    with pytest.raises(LayoutError, match="no 'training' list"):
        discover("btcv", tmp_path)


def test_btcv_raw(tmp_path, nifti):
    nums = [1, 2, 10, 21, 34, 35, 40]
    for n in nums:
        nifti(tmp_path / f"RawData/Training/img/img{n:04d}.nii.gz", TINY)
        nifti(tmp_path / f"RawData/Training/label/label{n:04d}.nii.gz", TINY.astype(np.uint8))
    nifti(tmp_path / "RawData/Testing/img/img0061.nii.gz", TINY)
    index = discover("btcv", tmp_path)
    assert [r.case_id for r in index.training] == [
        "img0001",
        "img0002",
        "img0010",
        "img0021",
        "img0034",
    ]
    assert [r.case_id for r in index.validation] == ["img0035", "img0040"]
    assert [r.case_id for r in index.test] == ["img0061"]
    for r in index.training + index.validation:
        assert r.label is not None and r.label.name == r.case_id.replace("img", "label") + ".nii.gz"
    # Pointing at RawData itself works too.
    assert discover("btcv", tmp_path / "RawData").counts() == index.counts()


def test_btcv_raw_missing_label(tmp_path, nifti):
    nifti(tmp_path / "RawData/Training/img/img0005.nii.gz", TINY)
    (tmp_path / "RawData/Training/label").mkdir(parents=True)
    with pytest.raises(
        DataError, match=r"img0005\.nii\.gz has no label file \(expected .*label0005\.nii\.gz"
    ):
        discover("btcv", tmp_path)


def test_btcv_missing_and_empty_dir(tmp_path):
    with pytest.raises(LayoutError) as e:
        discover("btcv", tmp_path / "nope")
    msg = str(e.value)
    assert "does not exist" in msg and str(tmp_path / "nope") in msg
    assert "Synapse" in msg and "syn3193805" in msg and "30 labelled cases" in msg
    assert "dataset_0.json" in msg and "RawData/Training/img" in msg
    with pytest.raises(
        LayoutError, match=r"is empty; BTCV is the Synapse multi-organ.*syn3193805.*dataset_0\.json"
    ):
        discover("btcv", tmp_path)
    with pytest.raises(ConfigError, match="needs a data directory"):
        discover("btcv")


def test_abdomenct1k(tmp_path, nifti):
    nifti(tmp_path / "AbdomenCT-1K-ImagePart1/Case_00001_0000.nii.gz", TINY)
    nifti(tmp_path / "AbdomenCT-1K-ImagePart1/Case_00002_0000.nii.gz", TINY)
    nifti(tmp_path / "AbdomenCT-1K-ImagePart2/Case_00401_0000.nii.gz", TINY)
    (tmp_path / "AbdomenCT-1K-ImagePart2/readme.txt").write_text("x")
    nifti(tmp_path / "Mask/Case_00002.nii.gz", TINY.astype(np.uint8))
    nifti(tmp_path / "Mask/Case_00401.nii.gz", TINY.astype(np.uint8))
    index = discover("abdomenct1k", tmp_path)
    assert index.counts() == {"training": 3, "validation": 0, "test": 0}
    assert [r.case_id for r in index.training] == ["Case_00001", "Case_00002", "Case_00401"]
    assert index.training[0].label is None
    assert index.training[1].label == tmp_path / "Mask/Case_00002.nii.gz"
    assert index.training[2].image == tmp_path / "AbdomenCT-1K-ImagePart2/Case_00401_0000.nii.gz"


def test_abdomenct1k_bad_layout(tmp_path):
    with pytest.raises(
        LayoutError,
        match=r"no AbdomenCT-1K-ImagePart\* folder; expected .*Case_00001_0000\.nii\.gz",
    ):
        discover("abdomenct1k", tmp_path)
    (tmp_path / "AbdomenCT-1K-ImagePart1").mkdir()
    with pytest.raises(LayoutError, match="no Case_XXXXX_0000.nii.gz images"):
        discover("abdomenct1k", tmp_path)


def test_folder(tmp_path, nifti):
    nifti(tmp_path / "a.nii.gz", TINY)
    nifti(tmp_path / "sub/b.nii", TINY)
    nifti(tmp_path / "sub/deeper/c.NII.GZ", TINY)
    (tmp_path / "sub/notes.txt").write_text("x")
    index = discover("folder", tmp_path)
    assert [r.case_id for r in index.training] == ["a", "sub/b", "sub/deeper/c"]
    assert all(r.label is None for r in index.training)
    assert index.counts() == {"training": 3, "validation": 0, "test": 0}


def test_folder_empty(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(LayoutError, match=f"{tmp_path} holds no .nii/.nii.gz files"):
        discover("folder", tmp_path)


def test_phantom_index():
    index = discover("phantom")
    assert index.root is None and index.counts() == {"training": 8, "validation": 4, "test": 0}
    assert [r.seed for r in index.validation] == [8, 9, 10, 11]
    assert all(r.image is None for r in index.split("all"))
    with pytest.raises(ConfigError, match="takes no data directory"):
        discover("phantom", "/tmp")
    with pytest.raises(ConfigError, match="did you mean 'abdomenct1k'"):
        discover("abdomenCT1k-", "/tmp")


def test_btcv_json_nested_a_million_levels_is_one_error(tmp_path):
    """Issue 22, item 10: json.loads raised RecursionError (a traceback)."""
    (tmp_path / "dataset_0.json").write_text("[" * 1_000_000 + "]" * 1_000_000)
    with pytest.raises(LayoutError, match="dataset_0.json is nested too deeply"):
        discover("btcv", tmp_path)


def test_btcv_json_entries_outside_the_data_dir_are_read_and_listed(tmp_path, nifti, ct):
    """Issue 22, item 13: ``../`` and absolute entries are read (users share image folders on
    purpose) and ``data check`` lists them; entries inside, even through ``a/../``, are not."""
    root, shared = tmp_path / "btcv", tmp_path / "shared"
    lab = np.zeros((8, 8, 4), np.uint8)
    lab[2:5, 2:5] = 1
    nifti(shared / "img1.nii.gz", ct(1))
    nifti(shared / "label1.nii.gz", lab)
    nifti(root / "imagesTr" / "img2.nii.gz", ct(2))
    nifti(root / "labelsTr" / "label2.nii.gz", lab)
    doc = {
        "training": [
            {"image": "../shared/img1.nii.gz", "label": str(shared / "label1.nii.gz")},
            {"image": "imagesTr/../imagesTr/img2.nii.gz", "label": "labelsTr/label2.nii.gz"},
        ],
        "validation": [],
    }
    (root / "dataset_0.json").write_text(json.dumps(doc))
    index = discover("btcv", root)
    assert [r.case_id for r in index.training] == ["img1", "img2"]
    assert index.outside == (root / "../shared/img1.nii.gz", shared / "label1.nii.gz")
    from collapsekit.data import check_dataset

    report = check_dataset("btcv", root)
    assert report["outside_data_dir"] == [str(p) for p in index.outside]
    assert any(
        w.startswith("2 files listed in dataset_0.json lie outside") for w in report["warnings"]
    )
