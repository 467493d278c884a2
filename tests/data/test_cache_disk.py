"""The memory-mapped disk cache: float16 within its bound, keys never crossed, slices read lazily."""

from __future__ import annotations

import json
import mmap
import os
import pickle
import shutil
import time

import numpy as np
import pytest
import torch

from collapsekit.data import (
    LoadOptions,
    PhantomConfig,
    PreprocessConfig,
    SliceDataset,
    clear_cache,
    load_volumes,
    memory_cache_info,
    write_phantom_dataset,
)
from collapsekit.data.cache import (
    CACHE_IMAGE_DTYPE,
    QUANTISATION_ERROR,
    MappedVolume,
    cache_key,
    entry_files,
    read_disk,
    read_slice,
    remove_stale_temporaries,
)
from collapsekit.data.layouts import discover
from collapsekit.errors import OutputError
from collapsekit.progress import TaskAdvanced


def _cached_flags(events):
    return [e.info["cached"] for e in events if isinstance(e, TaskAdvanced)]


@pytest.fixture
def btcv(tmp_path):
    """Three phantom cases written as .nii.gz in the BTCV layout (images and labels)."""
    write_phantom_dataset(tmp_path / "btcv", cases=3, size=48, slices=10, validation=0)
    return discover("btcv", tmp_path / "btcv").split("all")


def test_float16_bound_is_half_the_spacing_on_the_unit_interval():
    # The stated bound is exact: float16 spacing on [0.5, 1) is 2^-11, rounding to nearest.
    x = np.linspace(0, 1, 1_000_001, dtype=np.float64)
    err = np.abs(x.astype(CACHE_IMAGE_DTYPE).astype(np.float64) - x).max()
    assert err <= QUANTISATION_ERROR and err > 0.99 * QUANTISATION_ERROR
    assert QUANTISATION_ERROR * 425 < 0.11  # 0.1 HU of the default -175..250 window


def test_cached_volumes_equal_uncached_within_quantisation(tmp_path, btcv):
    ref = load_volumes(btcv)  # no disk cache: float32 in memory
    ref_arrays = [(np.array(v.image), np.array(v.label), v.slices, v.affine) for v in ref]
    assert all(v.image.dtype == np.float32 for v in ref)
    clear_cache()
    cold = load_volumes(btcv, options=LoadOptions(cache_dir=tmp_path / "c"))
    clear_cache()
    warm = load_volumes(btcv, options=LoadOptions(cache_dir=tmp_path / "c"))
    for (img, lab, slices, affine), c, w in zip(ref_arrays, cold, warm, strict=True):
        for v in (c, w):
            assert isinstance(v.image, np.memmap) and v.image.dtype == np.float16
            assert not v.image.flags.writeable and v.image.flags.f_contiguous
            diff = np.abs(v.image.astype(np.float64) - img.astype(np.float64)).max()
            assert diff <= QUANTISATION_ERROR
            assert v.label is not None and v.label.dtype == lab.dtype == np.uint8
            np.testing.assert_array_equal(v.label, lab)  # labels are never quantised
            np.testing.assert_array_equal(v.slices, slices)
            np.testing.assert_array_equal(v.affine, affine)
        np.testing.assert_array_equal(c.image, w.image)  # cold and warm runs: same numbers
    # A dataset over the cache gives the float32 slices of the uncached path within the bound.
    a, b = SliceDataset(ref, image_size=32), SliceDataset(warm, image_size=32)
    for i in range(0, len(a), 7):
        assert (a[i]["image"] - b[i]["image"]).abs().max() <= QUANTISATION_ERROR
        assert b[i]["image"].dtype == torch.float32


def test_entry_files_and_memory_info(tmp_path, btcv):
    cache = tmp_path / "c"
    vols = load_volumes(btcv[:1], options=LoadOptions(cache_dir=cache))
    digest, key_json = cache_key(btcv[0], PreprocessConfig(), None)
    files = entry_files(cache, digest)
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in files.values())
    meta = json.loads(files["meta"].read_text())
    assert meta["key"] == key_json and meta["shape"] == list(vols[0].image.shape)
    assert meta["image_dtype"] == "<f2" and meta["label_dtype"] == "|u1"
    info = memory_cache_info()
    assert info["volumes"] == 1 and info["bytes"] == 0
    assert info["mapped_bytes"] == vols[0].image.nbytes + vols[0].label.nbytes
    assert vols[0].image.nbytes == 48 * 48 * 10 * 2  # float16


def test_entry_of_another_configuration_is_never_read(tmp_path, btcv):
    cache = tmp_path / "c"
    rec = btcv[:1]
    a_cfg, b_cfg = PreprocessConfig(), PreprocessConfig(a_min=-1000.0, a_max=1000.0)
    a = np.array(load_volumes(rec, a_cfg, options=LoadOptions(cache_dir=cache))[0].image)
    clear_cache()
    b_ref = np.array(load_volumes(rec, b_cfg)[0].image)  # uncached reference of B
    clear_cache()
    # Plant A's entry under B's name: the digest matches, the stored key does not.
    da, _ = cache_key(rec[0], a_cfg, None)
    db, kb = cache_key(rec[0], b_cfg, None)
    for what, src in entry_files(cache, da).items():
        shutil.copy(src, entry_files(cache, db)[what])
    assert read_disk(cache, db, kb, "x") is None
    events: list = []
    b = load_volumes(rec, b_cfg, options=LoadOptions(cache_dir=cache), progress=events.append)[0]
    assert _cached_flags(events) == [False]  # recomputed, not A's numbers
    assert np.abs(b.image - b_ref).max() <= QUANTISATION_ERROR
    assert np.abs(b.image - a).max() > 0.1
    # ... and the recomputed entry now holds B's key.
    assert json.loads(entry_files(cache, db)["meta"].read_text())["key"] == kb


def test_incomplete_entry_is_a_miss(tmp_path, btcv):
    cache = tmp_path / "c"
    load_volumes(btcv[:1], options=LoadOptions(cache_dir=cache))
    digest, key_json = cache_key(btcv[0], PreprocessConfig(), None)
    files = entry_files(cache, digest)
    files["label"].unlink()  # e.g. deleted by hand
    assert read_disk(cache, digest, key_json, "x") is None
    files["meta"].unlink()  # a writer killed before its commit record
    assert read_disk(cache, digest, key_json, "x") is None
    clear_cache()
    v = load_volumes(btcv[:1], options=LoadOptions(cache_dir=cache))[0]
    assert v.label is not None and files["label"].is_file() and files["meta"].is_file()


def test_read_slice_releases_the_mapping(tmp_path):
    a = np.asfortranarray(np.random.default_rng(0).random((256, 256, 8)).astype(np.float16))
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    for z in range(8):
        s = read_slice(m, z)
        assert s.dtype == np.float32
        np.testing.assert_array_equal(s, a[:, :, z].astype(np.float32))
    np.testing.assert_array_equal(read_slice(a, 3, np.float16), a[:, :, 3])  # plain arrays too
    # After a read no page of the mapping is resident in this process (mincore is not in the
    # stdlib; /proc/self/smaps gives the mapping's Rss on Linux).
    smaps = _mapping_rss_kib(tmp_path / "a.npy")
    if smaps is None:
        pytest.skip("no /proc/self/smaps")
    np.asarray(m[:, :, :4]).max()  # touch half of it without read_slice
    assert _mapping_rss_kib(tmp_path / "a.npy") >= 256 * 256 * 4 * 2 // 1024 - 8
    read_slice(m, 0)
    assert _mapping_rss_kib(tmp_path / "a.npy") == 0
    assert isinstance(m._mmap, mmap.mmap)


def _mapping_rss_kib(path) -> int | None:
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return None
    rss, inside = 0, False
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            inside = len(head) >= 6 and head[-1] == str(path.resolve())
        elif inside and line.startswith("Rss:"):
            rss += int(head[1])
    return rss


def test_dataset_pickles_mapped_volumes_by_reference(tmp_path, btcv):
    vols = load_volumes(btcv, options=LoadOptions(cache_dir=tmp_path / "c"))
    ds = SliceDataset(vols, with_label=True)
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000 < sum(v.image.nbytes for v in vols)
    back = pickle.loads(blob)
    assert all(isinstance(v.image, np.memmap) for v in back.volumes)
    for i in (0, len(ds) // 2, len(ds) - 1):
        torch.testing.assert_close(back[i]["image"], ds[i]["image"], rtol=0, atol=0)
        torch.testing.assert_close(back[i]["label"], ds[i]["label"], rtol=0, atol=0)
    # In-memory volumes travel as they are.
    clear_cache()
    mem = SliceDataset(load_volumes(btcv[:1]))
    assert len(pickle.dumps(mem)) > mem.volumes[0].image.nbytes
    assert MappedVolume.of(mem.volumes[0]).open().image is mem.volumes[0].image


def test_phantom_cases_cache_to_disk(tmp_path):
    cfg = PhantomConfig(cases=2, size=32, slices=6)
    recs = discover("phantom", None, cfg).split("all")
    ref = [np.array(v.image) for v in load_volumes(recs, phantom=cfg)]
    clear_cache()
    got = load_volumes(recs, phantom=cfg, options=LoadOptions(cache_dir=tmp_path / "c"))
    assert len(list((tmp_path / "c").glob("*.json"))) == 2
    for r, g in zip(ref, got, strict=True):
        assert np.abs(g.image - r).max() <= QUANTISATION_ERROR


def test_unwritable_cache_is_one_output_error(tmp_path, btcv):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OutputError, match="cannot create the cache directory .*file"):
        load_volumes(btcv[:1], options=LoadOptions(cache_dir=tmp_path / "file"))
    cache = tmp_path / "c"
    digest, _ = cache_key(btcv[0], PreprocessConfig(), None)
    entry_files(cache, digest)["image"].mkdir(parents=True)  # something in the entry's way
    with pytest.raises(OutputError) as info:
        load_volumes(btcv[:1], options=LoadOptions(cache_dir=cache, workers=0))
    msg = str(info.value)
    assert msg.startswith(f"cannot write the cache entry of case {btcv[0].case_id} to {cache}")
    assert "\n" not in msg and info.value.__cause__ is None
    assert [p.name for p in cache.iterdir()] == [f"{digest}.image.npy"]  # no temp file left


def test_stale_temporaries_are_removed_fresh_ones_kept(tmp_path, btcv):
    cache = tmp_path / "c"
    cache.mkdir()
    stale, fresh = cache / ".abc.image.npy.x1.tmp", cache / ".abc.json.x2.tmp"
    for p in (stale, fresh):
        p.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    load_volumes(btcv[:1], options=LoadOptions(cache_dir=cache))  # a cache write cleans up first
    assert not stale.exists() and fresh.exists()  # a running writer's file is left alone
    assert remove_stale_temporaries(cache, older_than_s=0) == 1 and not fresh.exists()
