"""Caching (memory and disk, invalidation), split loading and the dataset check."""

from __future__ import annotations

import os

import numpy as np
import pytest

from collapsekit.data import (
    CaseRecord,
    LoadOptions,
    PhantomConfig,
    PreprocessConfig,
    check_dataset,
    clear_cache,
    load_split,
    load_volumes,
    memory_cache_info,
    write_phantom_dataset,
)
from collapsekit.progress import TaskAdvanced, TaskFinished, TaskStarted


def _events():
    seen: list = []
    return seen, seen.append


def _cached_flags(events):
    return [e.info["cached"] for e in events if isinstance(e, TaskAdvanced)]


def test_memory_cache_returns_same_volume(tmp_path, nifti, ct):
    p = nifti(tmp_path / "a.nii.gz", ct(0))
    rec = [CaseRecord("a", p)]
    ev, cb = _events()
    v1 = load_volumes(rec, progress=cb)[0]
    v2 = load_volumes(rec, progress=cb)[0]
    assert v1 is v2
    assert _cached_flags(ev) == [False, True]
    assert isinstance(ev[0], TaskStarted) and ev[0].total == 1 and isinstance(ev[2], TaskFinished)
    assert memory_cache_info()["volumes"] == 1
    assert memory_cache_info()["bytes"] == v1.image.nbytes


def test_disk_cache_and_invalidation(tmp_path, nifti, ct):
    cache = tmp_path / "cache"
    p = nifti(tmp_path / "a.nii.gz", ct(0))
    rec = [CaseRecord("a", p)]
    first = load_volumes(rec, options=LoadOptions(cache_dir=cache))[0]
    assert len(list(cache.glob("*.json"))) == 1
    clear_cache()
    ev, cb = _events()
    again = load_volumes(rec, options=LoadOptions(cache_dir=cache), progress=cb)[0]
    assert _cached_flags(ev) == [True]  # read from disk, not decoded
    np.testing.assert_array_equal(again.image, first.image)  # both the float16 disk entry
    np.testing.assert_array_equal(again.slices, first.slices)
    np.testing.assert_allclose(again.affine, first.affine)
    assert again.image.flags.f_contiguous and not again.image.flags.writeable
    assert isinstance(again.image, np.memmap) and again.image.dtype == np.float16

    # The file changes: new content, new mtime -> the old entry is not used.
    nifti(p, ct(1))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    ev, cb = _events()
    changed = load_volumes(rec, options=LoadOptions(cache_dir=cache), progress=cb)[0]
    assert _cached_flags(ev) == [False]
    assert not np.array_equal(changed.image, first.image)
    assert len(list(cache.glob("*.json"))) == 2

    # The preprocessing changes -> recomputed as well.
    ev, cb = _events()
    other = load_volumes(
        rec,
        PreprocessConfig(a_min=-1000, a_max=1000),
        options=LoadOptions(cache_dir=cache),
        progress=cb,
    )[0]
    assert _cached_flags(ev) == [False]
    assert not np.allclose(other.image, changed.image)
    assert len(list(cache.glob("*.json"))) == 3


def test_damaged_disk_cache_is_recomputed(tmp_path, nifti, ct):
    cache = tmp_path / "cache"
    p = nifti(tmp_path / "a.nii.gz", ct(0))
    ref = np.array(
        load_volumes([CaseRecord("a", p)], options=LoadOptions(cache_dir=cache))[0].image
    )  # not the mapping
    for damaged in (next(cache.glob("*.image.npy")), next(cache.glob("*.json"))):
        damaged.write_bytes(b"garbage")
        clear_cache()
        ev, cb = _events()
        v = load_volumes([CaseRecord("a", p)], options=LoadOptions(cache_dir=cache), progress=cb)[0]
        assert _cached_flags(ev) == [False]
        np.testing.assert_array_equal(v.image, ref)


def test_label_cached_with_image(tmp_path, nifti, ct):
    cache = tmp_path / "c"
    p = nifti(tmp_path / "i.nii.gz", ct(0))
    lab = np.zeros((8, 8, 4), np.uint8)
    lab[3, 3, :] = 7
    lp = nifti(tmp_path / "l.nii.gz", lab)
    load_volumes([CaseRecord("i", p, lp)], options=LoadOptions(cache_dir=cache))
    clear_cache()
    v = load_volumes([CaseRecord("i", p, lp)], options=LoadOptions(cache_dir=cache))[0]
    np.testing.assert_array_equal(v.label, lab)


def test_load_split_phantom():
    cfg = PhantomConfig(cases=3, size=32, slices=8, validation=1)
    train = load_split("phantom", split="training", phantom=cfg)
    val = load_split("phantom", split="validation", phantom=cfg)
    every = load_split("phantom", split="all", phantom=cfg)
    assert [v.case_id for v in train] == ["phantom0001", "phantom0002"]
    assert [v.case_id for v in val] == ["phantom0003"]
    assert [v.case_id for v in every] == ["phantom0001", "phantom0002", "phantom0003"]
    assert every[0] is train[0]  # cached
    v = train[0]
    assert v.image.shape == (32, 32, 8) and 0.0 <= v.image.min() and v.image.max() <= 1.0
    assert v.label is not None and v.label.dtype == np.uint8
    with pytest.raises(Exception, match="did you mean 'validation'"):
        load_split("phantom", split="valdation", phantom=cfg)


def test_check_dataset_btcv_layout(tmp_path):
    write_phantom_dataset(tmp_path / "p", cases=3, size=32, slices=8, seed=0, validation=1)
    report = check_dataset("btcv", tmp_path / "p")
    assert report["dataset"] == "btcv" and report["root"] == str(tmp_path / "p")
    assert report["volumes"] == {"training": 2, "validation": 1, "test": 0}
    vols = load_split("btcv", tmp_path / "p", split="all")
    per_split = [len(v.slices) for v in vols]
    assert report["slices"] == {
        "training": sum(per_split[:2]),
        "validation": per_split[2],
        "test": 0,
        "total": sum(per_split),
    }
    present = sorted({int(x) for v in vols for x in np.unique(v.label) if x})
    assert report["labels"] == present and 6 in present
    assert report["spacing"] == {"min": [12.5, 12.5, 18.75], "max": [12.5, 12.5, 18.75]}
    assert report["shape"] == {"min": [32, 32, 8], "max": [32, 32, 8]}
