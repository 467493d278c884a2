"""The slice dataset: indexing over usable slices, resizing, labels, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from collapsekit.data import SliceDataset, TwoViewTransform, Volume, pretrain_dataset
from collapsekit.errors import DataError


def _volume(
    case: str, seed: int, slices: list[int], shape=(16, 16, 6), label: bool = True
) -> Volume:
    rng = np.random.default_rng(seed)
    image = np.asfortranarray(rng.random(shape, dtype=np.float32))
    lab = np.asfortranarray(rng.integers(0, 14, size=shape).astype(np.uint8)) if label else None
    return Volume(case, image, lab, np.eye(4), np.array(slices, dtype=np.int64))


@pytest.fixture
def volumes() -> list[Volume]:
    return [_volume("a", 0, [1, 2, 4]), _volume("b", 1, [0, 5])]


def test_index_and_items(volumes):
    ds = SliceDataset(volumes, with_label=True)
    assert ds.index == [(0, 1), (0, 2), (0, 4), (1, 0), (1, 5)]
    assert len(ds) == 5
    item = ds[3]
    assert item["volume"] == 1 and item["slice"] == 0
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 16, 16)
    np.testing.assert_array_equal(item["image"][0].numpy(), volumes[1].image[:, :, 0])
    assert item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["label"].numpy(), volumes[1].label[:, :, 0])
    np.testing.assert_array_equal(ds[-1]["image"][0].numpy(), volumes[1].image[:, :, 5])
    with pytest.raises(IndexError):
        ds[5]


def test_resize(volumes):
    ds = SliceDataset(volumes, image_size=8, with_label=True)
    item = ds[0]
    ref = F.interpolate(
        torch.from_numpy(np.array(volumes[0].image[:, :, 1]))[None, None],
        size=(8, 8),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    torch.testing.assert_close(item["image"], ref)
    # nearest-exact shrink by 2 takes source pixel 2i + 1
    np.testing.assert_array_equal(item["label"].numpy(), volumes[0].label[1::2, 1::2, 1])


def test_labels_required(volumes):
    unlabeled = [_volume("c", 2, [0], label=False)]
    assert "label" not in SliceDataset(unlabeled)[0]
    with pytest.raises(DataError, match="case c has no label map"):
        SliceDataset(unlabeled, with_label=True)


def test_transform_output_merged(volumes):
    ds = pretrain_dataset(volumes, TwoViewTransform(size=8, geometric_only=True))
    item = ds[2]
    assert set(item) == {"view1", "view2", "box1", "box2", "flip1", "flip2", "volume", "slice"}
    assert item["volume"] == 0 and item["slice"] == 4
    assert item["view1"].shape == (1, 8, 8)


def test_dataloader_workers_reproducible(volumes):
    ds = pretrain_dataset(volumes, TwoViewTransform(size=8))

    def run() -> torch.Tensor:
        torch.manual_seed(3)
        dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=True)
        return torch.cat([torch.cat([b["view1"].flatten(1), b["box1"]], 1) for b in dl])

    a, b = run(), run()
    torch.testing.assert_close(a, b)
    assert a.shape == (5, 64 + 4)
