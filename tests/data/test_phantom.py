"""The phantom generator and its on-disk layouts: values, geometry, files re-read equal."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from collapsekit.data import (
    BTCV_LABELS,
    BTCV_TO_ABDOMENCT1K,
    PhantomConfig,
    discover,
    generate_phantom,
    write_phantom_dataset,
)
from collapsekit.data.spec import phantom_case_seed
from collapsekit.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return generate_phantom(3, size=96, slices=24)


def test_shapes_dtypes_affine(case):
    image, label, affine = case
    assert image.shape == label.shape == (96, 96, 24)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    np.testing.assert_allclose(np.diag(affine), [400 / 96, 400 / 96, 150 / 24, 1.0])
    # Centred on the origin: voxel (n-1)/2 maps to 0 in every axis.
    centre = affine @ np.array([47.5, 47.5, 11.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_seeded(case):
    image, label, _ = generate_phantom(3, size=96, slices=24)
    np.testing.assert_array_equal(image, case[0])
    np.testing.assert_array_equal(label, case[1])
    other, _, _ = generate_phantom(4, size=96, slices=24)
    assert np.abs(other.astype(int) - image).mean() > 20


def test_labels_are_btcv_organs(case):
    _, label, _ = case
    assert set(np.unique(label)) <= {0, *BTCV_LABELS}
    big = {1, 2, 3, 6, 7, 8, 9, 11}
    assert big <= set(np.unique(label)), "large organs must all be present"


def test_hounsfield_values(case):
    image, label, _ = case
    hu = image.astype(np.float64)
    assert abs(np.median(hu[:3, :3, :]) + 1000) < 40  # air outside the body
    assert 40 < np.median(hu[label == 6]) < 80  # liver
    assert 30 < np.median(hu[label == 1]) < 70  # spleen
    assert 130 < np.median(hu[label == 2]) < 200  # kidney, contrast-enhanced
    assert 150 < np.median(hu[label == 8]) < 250  # aorta
    assert np.percentile(hu, 99.9) > 450  # cortical bone
    fat = hu[(hu > -150) & (hu < -50)]
    assert fat.size > 0.05 * hu.size  # subcutaneous + visceral fat
    # Noise: outside the body the image is -1000 + correlated noise of 10-18 HU.
    assert 5 < hu[:4, :4, :].std() < 25


def test_anatomy_sides(case):
    """RAS: axis 0 grows to the patient's right. Liver and right kidney right, spleen left."""
    _, label, affine = case
    x = affine[0, 0] * np.arange(label.shape[0]) + affine[0, 3]

    def mean_x(organ: int) -> float:
        idx = np.nonzero(label == organ)[0]
        return float(x[idx].mean())

    assert mean_x(6) > 20  # liver
    assert mean_x(2) > 20 and mean_x(3) < -20  # right / left kidney
    assert mean_x(1) < -40  # spleen
    assert mean_x(9) > mean_x(8)  # IVC right of the aorta


def test_neighbouring_slices_alike(case):
    image, label, _ = case
    liver = label == 6
    dices = []
    for z in range(label.shape[2] - 1):
        a, b = liver[:, :, z], liver[:, :, z + 1]
        if a.sum() > 30 and b.sum() > 30:
            dices.append(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert len(dices) > 5 and min(dices) > 0.75
    w = np.clip((image.astype(np.float32) + 175) / 425, 0, 1)
    c = [
        np.corrcoef(w[:, :, z].ravel(), w[:, :, z + 1].ravel())[0, 1] for z in range(w.shape[2] - 1)
    ]
    assert min(c) > 0.8


def test_tiny_phantom_and_bad_sizes():
    image, label, _ = generate_phantom(0, size=32, slices=8)
    assert image.shape == (32, 32, 8) and (label > 0).any()
    with pytest.raises(ConfigError, match="size"):
        generate_phantom(0, size=4)
    with pytest.raises(ConfigError, match="validation"):
        PhantomConfig(cases=3, validation=3)


def test_write_btcv_reread_equal(tmp_path):
    out = tmp_path / "p"
    index = write_phantom_dataset(out, cases=3, size=32, slices=8, seed=2, validation=1)
    assert index.counts() == {"training": 2, "validation": 1, "test": 0}
    doc = json.loads((out / "dataset_0.json").read_text())
    assert doc["training"] == [
        {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"},
        {"image": "imagesTr/img0002.nii.gz", "label": "labelsTr/label0002.nii.gz"},
    ]
    assert doc["validation"] == [
        {"image": "imagesTr/img0003.nii.gz", "label": "labelsTr/label0003.nii.gz"}
    ]
    assert doc["test"] == [] and doc["labels"]["6"] == "liver"
    for i in range(3):
        image, label, affine = generate_phantom(phantom_case_seed(2, i), 32, 8)
        img = nib.load(str(out / f"imagesTr/img{i + 1:04d}.nii.gz"))
        lab = nib.load(str(out / f"labelsTr/label{i + 1:04d}.nii.gz"))
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), image)
        np.testing.assert_array_equal(np.asanyarray(lab.dataobj), label)
        np.testing.assert_allclose(img.affine, affine)
        np.testing.assert_allclose(img.header.get_zooms(), (12.5, 12.5, 18.75))
    assert [r.case_id for r in index.training] == ["img0001", "img0002"]
    assert index.training[0].label == out / "labelsTr/label0001.nii.gz"


def test_write_abdomenct1k_remaps_labels(tmp_path):
    out = tmp_path / "a"
    index = write_phantom_dataset(out, cases=2, layout="abdomenct1k", size=32, slices=8, seed=1)
    assert index.dataset == "abdomenct1k" and index.counts() == {
        "training": 2,
        "validation": 0,
        "test": 0,
    }
    _, label, _ = generate_phantom(phantom_case_seed(1, 1), 32, 8)
    mask = np.asanyarray(nib.load(str(out / "Mask/Case_00002.nii.gz")).dataobj)
    expected = np.zeros_like(label)
    for btcv, ct1k in BTCV_TO_ABDOMENCT1K.items():
        expected[label == btcv] = ct1k
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}
    assert (out / "AbdomenCT-1K-ImagePart1/Case_00002_0000.nii.gz").is_file()


def test_write_refuses_non_empty_and_never_clobbers(tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=str(out)):
        write_phantom_dataset(out, cases=1, size=16, slices=2, validation=0)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    write_phantom_dataset(out, cases=1, size=16, slices=2, validation=0, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "imagesTr/img0001.nii.gz").is_file()
    with pytest.raises(ConfigError, match="did you mean 'btcv'"):
        write_phantom_dataset(tmp_path / "q", layout="btvc")


def test_disk_phantom_matches_memory_phantom(tmp_path):
    from collapsekit.data import load_volumes

    cfg = PhantomConfig(cases=2, size=32, slices=8, seed=5, validation=1)
    mem = discover("phantom", phantom=cfg)
    assert [r.seed for r in mem.split("all")] == [500000, 500001]
    disk = write_phantom_dataset(tmp_path / "p", cases=2, size=32, slices=8, seed=5, validation=1)
    a = load_volumes(mem.split("all"), phantom=cfg)
    b = load_volumes(disk.split("all"))
    for va, vb in zip(a, b, strict=True):
        np.testing.assert_array_equal(va.image, vb.image)
        np.testing.assert_array_equal(va.label, vb.label)
        np.testing.assert_array_equal(va.slices, vb.slices)
        np.testing.assert_allclose(va.affine, vb.affine)
