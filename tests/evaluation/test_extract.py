"""Embedding extraction: modes, provenance, eval mode restored, pixel vectors through the one resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collapsekit.data.slices import select_slices, slice_tensor
from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError, InputError
from collapsekit.evaluation.extract import extract_embeddings, pixel_vectors, recalibrate_baseline
from collapsekit.models.backbone import build_backbone


def _volumes() -> list[Volume]:
    rng = np.random.default_rng(0)
    return [
        Volume(f"c{i}", rng.random((48, 48, 4), dtype=np.float32), None, np.eye(4), np.arange(4))
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18")


def test_backbone_mode_is_pooled_features_with_provenance(backbone) -> None:
    backbone.train()
    emb = extract_embeddings(backbone, _volumes(), image_size=32, samples=None, batch_size=3)
    assert emb.z.shape == (8, backbone.out_channels) and emb.z.dtype == np.float32
    assert emb.volume.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert emb.slice.tolist() == [0, 1, 2, 3] * 2
    assert backbone.training  # the caller's mode is restored
    backbone.eval()
    with torch.no_grad():
        ref = backbone(slice_tensor(_volumes(), [(0, 0)], 32))
    np.testing.assert_allclose(emb.z[0], ref[0].numpy(), rtol=1e-5, atol=1e-6)


def test_dense_mode_rows_are_locations(backbone) -> None:
    emb = extract_embeddings(backbone, _volumes(), image_size=64, samples=2, mode="dense")
    # 64 px / stride 32 -> a 2x2 map: 4 locations per slice
    assert emb.z.shape == (8, backbone.out_channels)
    assert emb.volume.tolist() == [0] * 4 + [1] * 4


def test_head_mode_needs_a_projector_and_modes_are_checked(backbone) -> None:
    with pytest.raises(InputError, match="--head"):
        extract_embeddings(backbone, _volumes(), image_size=32, mode="head")
    with pytest.raises(ConfigError, match="did you mean"):
        extract_embeddings(backbone, _volumes(), image_size=32, mode="dence")


def test_pixel_vectors_are_resized_slices() -> None:
    x, vol = pixel_vectors(_volumes(), samples=3, size=16)
    assert x.shape == (3, 256) and vol.tolist() == [0, 1, 1]  # rows 0, 4, 7 of 8
    np.testing.assert_array_equal(x[0], slice_tensor(_volumes(), [(0, 0)], 16).reshape(-1).numpy())


def test_random_baseline_is_recalibrated_by_an_explicit_step_and_raw_is_not() -> None:
    from collapsekit.data import PhantomConfig, load_split
    from collapsekit.runs.models import load_model

    vols = load_split("phantom", split="all", phantom=PhantomConfig(cases=2, size=32, slices=8))
    raw = load_model("random-raw:resnet18")
    rnd = load_model("random:resnet18")
    assert rnd.calibrate_bn and not raw.calibrate_bn
    # extraction never recalibrates behind the caller's back: it refuses the raw-init baseline
    with pytest.raises(InputError, match="recalibrate_baseline"):
        extract_embeddings(rnd, vols, image_size=32, samples=None)
    before = {k: v.clone() for k, v in rnd.backbone.state_dict().items()}
    cal = recalibrate_baseline(rnd, vols, image_size=32)
    # the given model is unchanged (name, flag and every tensor); the result is a new model
    assert rnd.name == "random:resnet18" and rnd.calibrate_bn
    assert all(torch.equal(before[k], v) for k, v in rnd.backbone.state_dict().items())
    assert cal.name == "random:resnet18 (BN recalibrated)" and not cal.calibrate_bn
    assert recalibrate_baseline(raw, vols, image_size=32) is raw  # nothing to do
    e_raw = extract_embeddings(raw, vols, image_size=32, samples=None)
    e_cal = extract_embeddings(cal, vols, image_size=32, samples=None)
    assert e_raw.name == "random-raw:resnet18"
    assert e_cal.name == "random:resnet18 (BN recalibrated)"
    # same weights, different BatchNorm statistics: the stem BN holds the data's statistics
    for k in ("conv1.weight", "layer4.1.conv2.weight"):
        assert torch.equal(raw.backbone.state_dict()[k], cal.backbone.state_dict()[k])
    bn = cal.backbone.bn1
    x = slice_tensor(vols, select_slices(vols, None), 32)
    with torch.no_grad():  # the stem BatchNorm's input, all slices in one chunk
        first = cal.backbone.conv1(x).transpose(0, 1).reshape(bn.num_features, -1)
    torch.testing.assert_close(bn.running_mean, first.mean(1), rtol=1e-4, atol=1e-5)
    assert not np.allclose(e_raw.z, e_cal.z)
