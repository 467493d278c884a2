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


def test_non_square_slices_keep_their_aspect_ratio() -> None:
    from collapsekit.data.slices import letterbox, resize_label, resize_slice, unletterbox

    assert letterbox(122, 101, 64) == (64, 53, 0, 5)
    assert letterbox(101, 122, 64) == (53, 64, 5, 0)
    assert letterbox(512, 512, 128) == (128, 128, 0, 0)
    # a disk of radius 40 px in a 122×101 slice stays a disk: its extent is as tall as wide
    yy, xx = torch.meshgrid(torch.arange(122.0), torch.arange(101.0), indexing="ij")
    disk = (((yy - 61) ** 2 + (xx - 50) ** 2) <= 40**2).float()
    out = resize_slice(disk[None], 64)[0]
    rows = (out > 0.5).any(dim=1).nonzero().flatten()
    cols = (out > 0.5).any(dim=0).nonzero().flatten()
    assert abs((rows[-1] - rows[0]) - (cols[-1] - cols[0])) <= 1
    # the padding (5 columns left, 6 right) is zero; the image region is the ones of the input
    ones = resize_slice(torch.ones(1, 122, 101), 64)[0]
    assert ones[:, :5].abs().max() == 0 and ones[:, 58:].abs().max() == 0
    torch.testing.assert_close(ones[:, 5:58], torch.ones(64, 53))
    lab = resize_label(torch.ones(122, 101, dtype=torch.long), 64)
    assert lab.dtype == torch.long and int(lab.sum()) == 64 * 53 and int(lab[:, :5].sum()) == 0
    # dense outputs map back onto the slice (smooth map: the round trip is close)
    smooth = (yy / 122 + xx / 101)[None, None]
    back = unletterbox(resize_slice(smooth, 64), 122, 101)
    assert back.shape == (1, 1, 122, 101)
    assert (back - smooth).abs().max() < 0.05
