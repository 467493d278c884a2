"""SliceStore: the stored slices as they are, a batch per call, contiguous runs read as one block."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from collapsekit.data import (
    LoadOptions,
    PhantomConfig,
    PreprocessConfig,
    Volume,
    clear_cache,
    load_split,
)
from collapsekit.data import slice_store as store_module
from collapsekit.data.cache import read_slice
from collapsekit.data.slice_store import SliceStore, batch_seed, collate
from collapsekit.errors import InputError


def _cached_volumes(cache_dir: Path) -> list[Volume]:
    """Two phantom volumes read back from the disk cache (memory-mapped float16)."""
    phantom = PhantomConfig(cases=3, size=32, slices=8, validation=1)
    kw = dict(phantom=phantom, options=LoadOptions(cache_dir=cache_dir))
    load_split("phantom", None, "training", PreprocessConfig(), **kw)  # type: ignore[arg-type]
    clear_cache()  # the next read comes from disk
    vols = load_split("phantom", None, "training", PreprocessConfig(), **kw)  # type: ignore[arg-type]
    assert all(isinstance(v.image, np.memmap) and v.image.dtype == np.float16 for v in vols)
    return vols


def _volume(case: str, h: int, w: int, z: int, seed: int) -> Volume:
    image = np.asfortranarray(np.random.default_rng(seed).random((h, w, z), dtype=np.float32))
    return Volume(case, image, None, np.eye(4), np.arange(z))


def test_gather_returns_the_stored_slices_in_the_requested_order(tmp_path: Path) -> None:
    vols = _cached_volumes(tmp_path)
    store = SliceStore(vols, seed=3)
    assert store.dtype == np.float16 and (store.height, store.width) == (32, 32)
    idx = [5, 0, len(store) - 1, 6, 4]
    images, sizes = store.gather(idx)
    assert images.shape == (5, 1, 32, 32) and images.dtype == torch.float16
    for row, i in enumerate(idx):
        vi, z = store.index[i]
        expected = read_slice(vols[vi].image, z, np.float16)
        assert np.array_equal(images[row, 0].numpy(), expected)  # bit for bit: no conversion
    assert sizes.tolist() == [[32, 32]] * 5


def test_adjacent_slices_are_read_as_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SliceStore([_volume("a", 6, 5, 10, 0), _volume("b", 6, 5, 4, 1)])
    calls: list[tuple[int, int]] = []
    real = store_module.read_block

    def spy(array: np.ndarray, z0: int, z1: int, dtype: np.dtype) -> np.ndarray:
        calls.append((z0, z1))
        return real(array, z0, z1, dtype)

    monkeypatch.setattr(store_module, "read_block", spy)
    # volume a: slices 3, 4, 5 (given out of order) and 9; volume b: slices 0 and 1
    images, _ = store.gather([5, 10, 3, 9, 4, 11])
    assert sorted(calls) == [(0, 2), (3, 6), (9, 10)]
    for row, i in enumerate([5, 10, 3, 9, 4, 11]):
        vi, z = store.index[i]
        assert np.array_equal(images[row, 0].numpy(), store.volumes[vi].image[:, :, z])


def test_mixed_sizes_are_padded_by_edge_replication_and_report_their_size() -> None:
    small, big = _volume("s", 4, 3, 2, 0), _volume("b", 6, 5, 2, 1)
    store = SliceStore([small, big])
    images, sizes = store.gather([1, 2])
    assert images.shape == (2, 1, 6, 5) and sizes.tolist() == [[4, 3], [6, 5]]
    expected = np.pad(small.image[:, :, 1], ((0, 2), (0, 2)), mode="edge")
    assert np.array_equal(images[0, 0].numpy(), expected)
    assert np.array_equal(images[1, 0].numpy(), big.image[:, :, 0])


def test_batches_through_a_dataloader_carry_a_seed_of_epoch_and_indices() -> None:
    store = SliceStore([_volume("a", 6, 5, 8, 0)], seed=7)
    loader = DataLoader(store, batch_size=3, sampler=[4, 0, 7, 1, 2, 3], collate_fn=collate)
    first, second = list(loader)
    assert first["index"].tolist() == [4, 0, 7] and first["slice"].tolist() == [4, 0, 7]
    assert first["image"].shape == (3, 1, 6, 5) and first["size"].shape == (3, 2)
    assert first["seed"] == batch_seed(7, 0, [4, 0, 7]) != second["seed"]
    store.epoch = 1
    assert next(iter(loader))["seed"] == batch_seed(7, 1, [4, 0, 7]) != first["seed"]
    assert batch_seed(7, 0, [4, 0, 7]) == batch_seed(7, 0, [4, 0, 7]) < 2**63


def test_item_access_and_errors() -> None:
    store = SliceStore([_volume("a", 6, 5, 3, 0)])
    item = store[-1]
    assert (item["volume"], item["slice"], item["index"]) == (0, 2, 2)
    assert item["image"].shape == (1, 6, 5)
    with pytest.raises(IndexError):
        store[3]
    empty = _volume("e", 4, 4, 2, 0)
    empty.slices = np.array([], dtype=np.int64)
    with pytest.raises(InputError, match="no usable slices"):
        SliceStore([empty])


def test_memory_mapped_volumes_pickle_as_file_references(tmp_path: Path) -> None:
    store = SliceStore(_cached_volumes(tmp_path))
    blob = pickle.dumps(store)
    assert len(blob) < 20_000  # references, not the 2 x 32 x 32 x 8 float16 arrays
    again = pickle.loads(blob)
    assert np.array_equal(again.gather([0, 9])[0].numpy(), store.gather([0, 9])[0].numpy())
