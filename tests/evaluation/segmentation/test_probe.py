"""Linear probe: frozen backbone, cached = uncached, a real signal, NIfTI predictions, bad input."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.data.slices import slice_tensor
from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError, DataError
from collapsekit.evaluation.segmentation._data import training_slices
from collapsekit.evaluation.segmentation.probe import (
    ProbeConfig,
    bilinear_matrix,
    frozen_backbone,
    linear_probe,
)
from collapsekit.evaluation.segmentation.scoring import SegmentationResult, score_predictions
from collapsekit.models.backbone import build_backbone
from collapsekit.progress import ProgressEvent, TaskAdvanced, TaskStarted

LABELS = {1: "spleen", 2: "liver", 3: "gallbladder"}
AFFINE = np.array(
    [[0.8, 0, 0, -12.0], [0, 0.8, 0, 7.5], [0, 0, 2.5, -30.0], [0, 0, 0, 1]], dtype=np.float64
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and 2 shared cores are not oversubscribed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_volume(
    case: str, seed: int, size: int = 32, z: int = 6, organs: tuple[int, ...] = (1, 2)
) -> Volume:
    """Noise background, a bright 12-px square (organ 1) and a grey 8-px square (organ 2) per
    slice at random positions, so a probe must read the image, not a position prior."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.0, 0.15, (size, size, z)).astype(np.float32)
    lab = np.zeros((size, size, z), dtype=np.int64)
    for k in range(z):
        if 1 in organs:
            r, c = rng.integers(2, size - 14, 2)
            img[r : r + 12, c : c + 12, k] = 0.9
            lab[r : r + 12, c : c + 12, k] = 1
        if 2 in organs:
            r, c = rng.integers(2, size - 10, 2)
            free = lab[r : r + 8, c : c + 8, k] == 0
            img[r : r + 8, c : c + 8, k][free] = 0.5
            lab[r : r + 8, c : c + 8, k][free] = 2
    return Volume(case, img, lab, AFFINE.copy(), np.arange(z))


@pytest.fixture(scope="module")
def data() -> tuple[list[Volume], list[Volume]]:
    train = [make_volume(f"train{i}", i) for i in range(4)]
    val = [make_volume("val0", 100), make_volume("val1", 101, organs=(1,))]
    return train, val


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18").eval()


FAST = ProbeConfig(epochs=2, image_size=32, output_stride=8, batch_size=8)


class IntensityBackbone(nn.Module):
    """A hand-made representation that separates the organs: intensity bands pooled at stride 8."""

    out_channels = 3
    stride = 8

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        bands = torch.cat([(x > 0.7).float(), ((x > 0.3) & (x < 0.7)).float(), x < 0.3], dim=1)
        return F.avg_pool2d(bands.float(), 8)


class ConstantBackbone(IntensityBackbone):
    """A collapsed representation: the same feature everywhere."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 3, x.shape[-2] // 8, x.shape[-1] // 8, device=x.device)


def test_backbone_bit_identical_and_bn_in_eval_mode(data, tmp_path) -> None:
    train, val = data[0][:2], data[1]
    torch.manual_seed(1)
    bb = build_backbone("resnet18")
    bb.train()  # the caller's mode must survive, and the probe must still run in eval mode
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    seen_training: list[bool] = []
    for m in bb.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda mod, _inp: seen_training.append(mod.training))
    result = linear_probe(bb, train, val, LABELS, dataclasses.replace(FAST, epochs=1))
    assert seen_training and not any(seen_training)  # hooks travel with the deep copy
    after = bb.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # running stats and num_batches_tracked too
    assert bb.training and bb.stride == 32  # not switched to eval, not dilated
    assert all(p.requires_grad for p in bb.parameters())
    assert isinstance(result, SegmentationResult)


def test_cached_and_uncached_give_the_same_result(data, backbone, tmp_path) -> None:
    train, val = data[0][:2], data[1]
    results = {
        mode: linear_probe(
            backbone,
            train,
            val,
            LABELS,
            dataclasses.replace(FAST, cache=mode, cache_dir=str(tmp_path / "c")),
        )
        for mode in ("memory", "disk", "none")
    }
    ref = results["memory"]
    assert ref.info["feature_shape"] == [512, 4, 4] and ref.info["train_slices"] == 12
    assert ref.info["cache_bytes"] == 12 * 512 * 4 * 4 * 4  # 12 slices of (512, 4, 4) float32
    assert results["disk"].info["cache_bytes"] == ref.info["cache_bytes"]
    assert results["none"].info["cache_bytes"] == 0
    assert list((tmp_path / "c").iterdir()) == []  # the disk cache is removed afterwards
    for mode in ("disk", "none"):
        r = results[mode]
        np.testing.assert_allclose(
            [h["loss"] for h in r.history], [h["loss"] for h in ref.history], rtol=1e-5
        )
        for case in ref.per_volume:
            for organ, d in ref.per_volume[case].items():
                other = r.per_volume[case][organ]
                assert (d is None) == (other is None)
                if d is not None:
                    assert other == pytest.approx(d, abs=1e-6)


def test_probe_learns_a_real_signal(data, backbone) -> None:
    train, val = data
    cfg = dataclasses.replace(FAST, epochs=12, image_size=64)
    good = linear_probe(IntensityBackbone(), train, val, LABELS, cfg, name="intensity")
    rand = linear_probe(backbone, train, val, LABELS, cfg, name="random:resnet18")
    flat = linear_probe(ConstantBackbone(), train, val, LABELS, cfg, name="collapsed")
    # Chance level: predicting the organ everywhere gives Dice 2p/(1+p), p = organ fraction.
    lab = np.concatenate([v.label.ravel() for v in val])
    p = float((lab == 1).mean())
    chance = 2 * p / (1 + p)
    assert good.dice["spleen"] > 0.85
    assert rand.dice["spleen"] > chance + 0.25
    # A collapsed representation cannot localise anything: it predicts one class everywhere.
    assert flat.dice["spleen"] is not None and flat.dice["spleen"] <= chance + 1e-6
    assert good.mean_dice > rand.mean_dice > flat.mean_dice
    assert rand.history[-1]["loss"] < rand.history[0]["loss"]
    # An organ absent from every validation case is reported as None and left out of the mean.
    assert good.dice["gallbladder"] is None
    assert good.mean_dice == pytest.approx(np.mean([good.dice["spleen"], good.dice["liver"]]))
    assert good.absent == {"val0": ["gallbladder"], "val1": ["liver", "gallbladder"]}


@pytest.mark.parametrize(("stride", "size"), [(8, 64), (16, 64), (32, 64)])
def test_output_stride_sets_feature_size(backbone, stride: int, size: int) -> None:
    bb = frozen_backbone(backbone, stride)
    with torch.no_grad():
        f = bb.forward_features(torch.zeros(2, 1, size, size))
    assert f.shape == (2, 512, size // stride, size // stride)
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    assert backbone.stride == 32  # the original is untouched


def test_saved_predictions_rescored_independently(data, backbone, tmp_path) -> None:
    train, val = data
    r = linear_probe(backbone, train, val, LABELS, FAST, save_predictions=tmp_path / "pred")
    for v in val:
        img = nib.load(tmp_path / "pred" / f"{v.case_id}_pred.nii.gz")
        np.testing.assert_allclose(img.affine, v.affine)
        pred = np.asarray(img.dataobj)
        assert pred.dtype == np.uint8 and pred.shape == v.label.shape
        for organ_id, organ in LABELS.items():
            p, g = pred == organ_id, v.label == organ_id
            if g.sum() == 0:
                assert r.per_volume[v.case_id][organ] is None
                assert r.absent_predicted_voxels[v.case_id][organ] == int(p.sum())
            else:
                ref = 2 * (p & g).sum() / (p.sum() + g.sum())
                assert r.per_volume[v.case_id][organ] == pytest.approx(ref, abs=1e-6)


def test_score_predictions_aggregates_as_documented() -> None:
    lab_a = np.zeros((4, 4, 2), dtype=np.int64)
    lab_a[0, :, 0] = 1  # spleen, 4 voxels
    lab_a[2, :2, 1] = 2  # liver, 2 voxels
    lab_b = np.zeros_like(lab_a)
    lab_b[1, :, 1] = 1  # spleen only
    pred_a = lab_a.copy()
    pred_a[2, :2, 1] = 0  # liver missed -> 0.0; spleen perfect -> 1.0
    pred_b = np.zeros_like(lab_b)
    pred_b[1, :2, 1] = 1  # 2 of 4 spleen voxels -> 2*2/(2+4) = 2/3
    pred_b[3, 3, 0] = 3  # gallbladder absent, predicted on one voxel
    vols = [
        Volume("a", lab_a.astype(np.float32), lab_a, np.eye(4), np.arange(2)),
        Volume("b", lab_b.astype(np.float32), lab_b, np.eye(4), np.arange(2)),
    ]
    r = score_predictions("m", "test", {"a": pred_a, "b": pred_b}, vols, LABELS)
    assert r.per_volume == {
        "a": {"spleen": 1.0, "liver": 0.0, "gallbladder": None},
        "b": {"spleen": pytest.approx(2 / 3), "liver": None, "gallbladder": None},
    }
    assert r.dice["spleen"] == pytest.approx((1 + 2 / 3) / 2)
    assert r.dice["liver"] == 0.0 and r.dice["gallbladder"] is None
    assert r.mean_dice == pytest.approx(((1 + 2 / 3) / 2 + 0.0) / 2)
    assert r.mean_dice_present == pytest.approx(((1.0 + 0.0) / 2 + 2 / 3) / 2)
    assert r.absent == {"a": ["gallbladder"], "b": ["liver", "gallbladder"]}
    assert r.absent_predicted_voxels["b"] == {"liver": 0, "gallbladder": 1}
    d = r.to_dict()
    assert d["dice"]["gallbladder"] is None and d["checkpoint"] == "m"


def test_label_fraction_is_a_deterministic_subset(data, backbone) -> None:
    train, val = data
    cfg = dataclasses.replace(FAST, epochs=1, label_fraction=0.5)
    a = linear_probe(backbone, train, val, LABELS, cfg)
    b = linear_probe(backbone, train, val, LABELS, cfg)
    assert a.info["train_cases"] == b.info["train_cases"] and len(a.info["train_cases"]) == 2
    assert a.info["train_slices"] == 12
    tiny = linear_probe(backbone, train, val, LABELS, dataclasses.replace(cfg, label_fraction=0.01))
    assert len(tiny.info["train_cases"]) == 1


def test_progress_events_and_no_printing(data, backbone, capsys) -> None:
    train, val = data
    events: list[ProgressEvent] = []
    linear_probe(backbone, train, val, LABELS, FAST, progress=events.append)
    started = [e for e in events if isinstance(e, TaskStarted) and e.task == "probe/train"]
    assert started and started[0].total == FAST.epochs
    losses = [
        e.info["loss"] for e in events if isinstance(e, TaskAdvanced) and e.task == "probe/train"
    ]
    assert len(losses) == FAST.epochs and all(np.isfinite(losses))
    assert capsys.readouterr() == ("", "")


def test_augment_and_dice_loss_paths(data, backbone) -> None:
    train, val = data[0][:2], data[1]
    r = linear_probe(
        backbone,
        train,
        val,
        LABELS,
        dataclasses.replace(FAST, epochs=1, augment=True, dice_loss=True),
    )
    assert r.info["cache_bytes"] == 0 and np.isfinite(r.history[0]["loss"])
    assert 0.0 <= r.mean_dice <= 1.0


def _with(v: Volume, **changes) -> Volume:
    return dataclasses.replace(v, **changes)


@pytest.mark.parametrize(
    ("which", "change", "match"),
    [
        ("train", {"label": None}, "training case 'train0' has no label map"),
        ("val", {"label": None}, "validation case 'val0' has no label map"),
        ("train", {"label": np.zeros((32, 32, 5), dtype=np.int64)}, "'train0'.*shape"),
        ("val", {"image": np.zeros((30, 32, 6), dtype=np.float32)}, "'val0'.*shape"),
        ("val", {"label": np.full((32, 32, 6), 7, dtype=np.int64)}, r"'val0'.*\[7\].*outside"),
        ("val", {"label": np.full((32, 32, 6), 0.5)}, "'val0'.*non-integer"),
    ],
)
def test_bad_volumes_name_the_case(data, backbone, which, change, match) -> None:
    train, val = (list(x) for x in data)
    split = train if which == "train" else val
    split[0] = _with(split[0], **change)
    with pytest.raises(DataError, match=match):
        linear_probe(backbone, train, val, LABELS, FAST)


def test_bad_splits_and_backbones(data, backbone) -> None:
    train, val = data
    with pytest.raises(DataError, match="validation split is empty"):
        linear_probe(backbone, train, [], LABELS, FAST)
    with pytest.raises(DataError, match="training split is empty"):
        linear_probe(backbone, [], val, LABELS, FAST)
    with pytest.raises(DataError, match="appears twice"):
        linear_probe(backbone, train, [val[0], val[0]], LABELS, FAST)
    empty = _with(val[0], label=np.zeros_like(val[0].label))
    with pytest.raises(DataError, match="no organ of the label set"):
        linear_probe(backbone, train, [empty], LABELS, FAST)
    with pytest.raises(DataError, match="2 input channels"):
        linear_probe(build_backbone("resnet18", in_channels=2), train, val, LABELS, FAST)
    with pytest.raises(ConfigError, match="dilate"):
        linear_probe(
            ConstantBackbone(), train, val, LABELS, dataclasses.replace(FAST, output_stride=16)
        )


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="did you mean 'memory'"):
        ProbeConfig(cache="memroy")
    with pytest.raises(ConfigError, match="output_stride"):
        ProbeConfig(output_stride=4)
    with pytest.raises(ConfigError, match="multiple of 32"):
        ProbeConfig(image_size=100)
    with pytest.raises(ConfigError, match="label_fraction"):
        ProbeConfig(label_fraction=0.0)
    with pytest.raises(ConfigError, match="epochs"):
        ProbeConfig(epochs=0)
    assert ProbeConfig(cache="DISK").cache == "disk"


@pytest.mark.parametrize(("h", "w", "size"), [(4, 4, 128), (2, 3, 32), (16, 16, 64)])
def test_bilinear_matrix_equals_interpolate(h: int, w: int, size: int) -> None:
    x = torch.randn(2, 3, h, w)
    ref = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    got = bilinear_matrix(h, size) @ x @ bilinear_matrix(w, size).T
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_probe_input_equals_spectrum_input_for_the_same_slice() -> None:
    """One resize: a 512-px slice shrunk to 64 px is the same tensor for the probe (training and
    prediction) and for embedding extraction / the spectrum (antialiased, not aliased)."""
    vol = make_volume("big", seed=5, size=512, z=3)
    probe_images, _ = training_slices([vol], LABELS, 64)
    spectrum_images = slice_tensor([vol], [(0, s) for s in range(3)], 64)
    assert probe_images.shape == spectrum_images.shape == (3, 1, 64, 64)
    torch.testing.assert_close(probe_images, spectrum_images, rtol=0, atol=0)
    aliased = F.interpolate(
        torch.from_numpy(np.moveaxis(vol.image, -1, 0)[:, None].copy()),
        size=(64, 64),
        mode="bilinear",
        align_corners=False,
    )
    assert not torch.allclose(probe_images, aliased)  # the old probe resize differs
