"""Damaged and stale disk-cache entries (issue 22, items 8 and 9): every mapped entry is checked
against its ``.json`` (shapes, slice indices, affines, a sample checksum) and rebuilt with a note;
a source rewritten in place with its size and mtime kept is never served from its old entry."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data import CaseRecord, LoadOptions, PreprocessConfig, clear_cache, load_volumes
from collapsekit.data._cache_check import SAMPLE_BLOCKS, SAMPLE_BYTES, entry_problem
from collapsekit.data.cache import cache_key, entry_files, read_disk
from collapsekit.progress import Message, TaskAdvanced


def _events():
    ev: list = []
    return ev, ev.append


def _cached(ev) -> list[bool]:
    return [e.info["cached"] for e in ev if isinstance(e, TaskAdvanced)]


@pytest.fixture
def entry(tmp_path, nifti, ct):
    """One NIfTI case with a label, cached: ``(record, cache dir, entry files, fresh volume)``."""
    img = ct(0, (48, 48, 12))
    lab = np.zeros(img.shape, np.uint8)
    lab[10:20, 10:20] = 6
    rec = CaseRecord(
        "a", nifti(tmp_path / "a.nii.gz", img), nifti(tmp_path / "a_label.nii.gz", lab)
    )
    cache = tmp_path / "cache"
    (vol,) = load_volumes([rec], options=LoadOptions(cache_dir=cache))
    ref = (np.array(vol.image), np.array(vol.label), np.array(vol.slices))
    clear_cache()
    digest, _ = cache_key(rec, PreprocessConfig(), None)
    return rec, cache, entry_files(cache, digest), ref


def _reload(rec, cache):
    clear_cache()
    ev, cb = _events()
    (vol,) = load_volumes([rec], options=LoadOptions(cache_dir=cache), progress=cb)
    notes = [e.text for e in ev if isinstance(e, Message) and e.level == "warning"]
    return vol, _cached(ev), notes


def _edit_meta(files, **changes):
    meta = json.loads(files["meta"].read_text())
    meta.update(changes)
    files["meta"].write_text(json.dumps(meta))


def _assert_rebuilt(rec, cache, ref, needle):
    vol, cached, notes = _reload(rec, cache)
    assert cached == [False]
    (note,) = notes
    assert note == f"cache entry of case a in {cache} is damaged ({needle}); rebuilt"
    np.testing.assert_array_equal(vol.image, ref[0])
    np.testing.assert_array_equal(vol.label, ref[1])
    np.testing.assert_array_equal(vol.slices, ref[2])
    again, cached, notes = _reload(rec, cache)  # the rebuilt entry is served, silently
    assert cached == [True] and notes == []


def test_intact_entry_is_served(entry):
    rec, cache, files, ref = entry
    vol, cached, notes = _reload(rec, cache)
    assert cached == [True] and notes == []
    np.testing.assert_array_equal(vol.image, ref[0])


@pytest.mark.parametrize(
    "slices,needle",
    [
        ([3, 40], "it lists slice 40 of a 12-slice volume"),
        ([-1, 2], "it lists slice -1 of a 12-slice volume"),
        ([4, 2], "its usable slices are not in increasing order"),
        (["x"], "its list of usable slices is not a list of integers"),
    ],
)
def test_entry_with_bad_slice_indices_is_rebuilt(entry, slices, needle):
    rec, cache, files, ref = entry
    _edit_meta(files, slices=slices)
    _assert_rebuilt(rec, cache, ref, needle)


def test_entry_with_a_bad_affine_is_rebuilt(entry):
    rec, cache, files, ref = entry
    _edit_meta(files, affine=[[1.0, 0.0], [0.0, 1.0]])
    _assert_rebuilt(rec, cache, ref, "its affine is not a finite 4 x 4 matrix")


@pytest.mark.parametrize("which", ["image", "label"])
def test_body_overwritten_with_garbage_of_the_same_size_is_rebuilt(entry, which):
    rec, cache, files, ref = entry
    path = files[which]
    size = path.stat().st_size
    with open(path, "r+b") as f:  # keep the .npy header: shape and dtype still match
        header = int(np.load(path, mmap_mode="r").offset)
        f.seek(header)
        f.write(np.random.default_rng(0).integers(0, 256, size - header, np.uint8).tobytes())
    assert path.stat().st_size == size
    _assert_rebuilt(rec, cache, ref, "its arrays do not match the checksum written with them")


def test_entry_without_a_checksum_is_rebuilt(entry):
    rec, cache, files, ref = entry
    meta = json.loads(files["meta"].read_text())
    del meta["check"]
    files["meta"].write_text(json.dumps(meta))
    _assert_rebuilt(rec, cache, ref, "it has no checksum")


def test_checksum_reads_a_bounded_sample(entry):
    """What the check reads does not grow with the volume: header + 16 blocks of 4 KiB."""
    rec, cache, files, ref = entry
    meta = json.loads(files["meta"].read_text())
    image = np.load(files["image"], mmap_mode="r")
    label = np.load(files["label"], mmap_mode="r")
    assert entry_problem(files, meta, image, label) is None
    assert SAMPLE_BLOCKS * SAMPLE_BYTES == 64 << 10
    # a byte changed inside a sampled block is found; one between the blocks is not (stated)
    body = image.nbytes
    with open(files["image"], "r+b") as f:
        f.seek(int(image.offset) + body - 1)
        last = f.read(1)
        f.seek(int(image.offset) + body - 1)
        f.write(bytes([last[0] ^ 0xFF]))
    assert entry_problem(files, meta, image, label) is not None


def test_data_check_and_spectrum_rebuild_instead_of_crashing(tmp_path, nifti, ct):
    """The issue's reproduction: slices outside the volume crashed `spectrum` with an IndexError
    while `data check` passed. Both now rebuild the entry, with one warning line."""
    data = tmp_path / "data"
    for i in range(3):
        nifti(data / f"v{i}.nii.gz", ct(i, (32, 32, 6)))
    cache = tmp_path / "cache"
    runner = CliRunner()
    args = ["--dataset", "folder", "--data-dir", str(data), "--cache-dir", str(cache)]
    res = runner.invoke(app, ["data", "check", *args, "--preprocess-workers", "0"])
    assert res.exit_code == 0, res.output
    for meta_file in cache.glob("*.json"):
        meta = json.loads(meta_file.read_text())
        meta["slices"] = [0, 1, 99]
        meta_file.write_text(json.dumps(meta))
    clear_cache()
    res = runner.invoke(app, ["data", "check", *args, "--preprocess-workers", "0"])
    assert res.exit_code == 0, res.output
    assert res.output.count("it lists slice 99 of a 6-slice volume); rebuilt") == 3
    for meta_file in cache.glob("*.json"):
        meta_file.write_text(meta_file.read_text().replace('"slices": [', '"slices": [99, '))
    clear_cache()
    res = runner.invoke(app, ["spectrum", "random:resnet18", *args, "--samples", "8",
                              "--device", "cpu", "--preprocess-workers", "0",
                              "--out", str(tmp_path / "d")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "IndexError" not in res.output and "rebuilt" in res.output


# --- item 9: stale entries ---------------------------------------------------------------------


def test_rewrite_in_place_with_size_and_mtime_kept_is_not_served_stale(tmp_path, nifti, ct):
    """Same size, mtime set back (cp -p, a tool that preserves times): the ctime still changed."""
    p = nifti(tmp_path / "a.nii.gz", ct(0, (16, 16, 4)))
    rec = [CaseRecord("a", p)]
    cache = tmp_path / "cache"
    (first,) = load_volumes(rec, options=LoadOptions(cache_dir=cache))
    st = p.stat()
    replacement = tmp_path / "b.nii.gz"
    nifti(replacement, ct(1, (16, 16, 4)))
    data = replacement.read_bytes()
    assert len(data) == st.st_size or True  # gzip sizes may differ; pad to the same size below
    data = (
        data[: st.st_size] if len(data) >= st.st_size else data + b"\0" * (st.st_size - len(data))
    )
    time.sleep(0.01)
    with open(p, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = p.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )
    assert after.st_ctime_ns != st.st_ctime_ns
    clear_cache()
    ev, cb = _events()
    (second,) = load_volumes(rec, options=LoadOptions(cache_dir=cache), progress=cb)
    assert _cached(ev) == [False]
    assert not np.array_equal(np.asarray(second.image), np.asarray(first.image))
    assert read_disk(cache, *cache_key(rec[0], PreprocessConfig(), None), "a") is not None


def test_file_replaced_by_another_with_the_same_times_is_not_served_stale(tmp_path, nifti, ct):
    """mv of another file over it, times copied (a new inode)."""
    p = nifti(tmp_path / "a.nii.gz", ct(0, (16, 16, 4)))
    key_before = cache_key(CaseRecord("a", p), PreprocessConfig(), None)
    st = p.stat()
    other = nifti(tmp_path / "tmp.nii.gz", ct(0, (16, 16, 4)))  # same content even
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, p)
    assert cache_key(CaseRecord("a", p), PreprocessConfig(), None) != key_before
