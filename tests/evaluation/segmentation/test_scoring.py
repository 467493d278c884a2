"""Per-organ 3D Dice: hand-computed cases, MONAI's compute_dice/DiceMetric, absent organs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, compute_dice
from monai.networks.utils import one_hot

from collapsekit.errors import InputError
from collapsekit.evaluation.segmentation.scoring import dice_per_organ, encode_classes

LABELS = {1: "spleen", 2: "liver", 3: "gallbladder", 4: "aorta"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and 2 shared cores are not oversubscribed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((4, 4, 2), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[0, 0:4, 0] = 1  # spleen: 4 voxels
    pred[0, 0:2, 0] = 1  # 2 of them ...
    pred[3, 0:2, 1] = 1  # ... plus 2 false positives -> 2*2/(4+4) = 0.5
    gt[1:3, 1:3, 1] = 2  # liver: identical 4-voxel square -> 1.0
    pred[1:3, 1:3, 1] = 2
    pred[2, 0, 0] = 3  # gallbladder absent from the ground truth, predicted on 1 voxel
    gt[3, 3, 0] = 4  # aorta: 1 voxel, missed -> 0.0
    return pred, gt


def test_hand_computed_values_and_absent_organs() -> None:
    pred, gt = _hand_case()
    out = dice_per_organ(pred, gt, LABELS)
    assert list(out) == ["spleen", "liver", "gallbladder", "aorta"]
    assert out["spleen"]["dice"] == pytest.approx(0.5)
    assert out["liver"]["dice"] == pytest.approx(1.0)
    assert out["aorta"]["dice"] == pytest.approx(0.0)
    assert out["spleen"]["label_voxels"] == 4 and out["spleen"]["predicted_voxels"] == 4
    # Absent organ: reported explicitly, never as 0 or 1.
    assert out["gallbladder"] == {
        "dice": None,
        "present": False,
        "label_voxels": 0,
        "predicted_voxels": 1,
    }
    assert out["aorta"]["present"] and out["aorta"]["predicted_voxels"] == 0


def test_absent_and_not_predicted_is_none_not_one() -> None:
    gt = np.zeros((3, 3, 3), dtype=np.int64)
    gt[1, 1, 1] = 1
    out = dice_per_organ(gt.copy(), gt, {1: "spleen", 2: "liver"})
    assert out["spleen"]["dice"] == 1.0
    assert out["liver"] == {
        "dice": None,
        "present": False,
        "label_voxels": 0,
        "predicted_voxels": 0,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai_one_hot_and_dice_metric(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = len(LABELS) + 1
    # Blocky random maps so that overlaps are partial, and organ 3 removed from the ground truth.
    gt = np.kron(rng.integers(0, k, (4, 4, 3)), np.ones((3, 3, 2), dtype=np.int64))
    gt[gt == 3] = 0
    pred = np.where(rng.random(gt.shape) < 0.3, rng.integers(0, k, gt.shape), gt)
    out = dice_per_organ(pred, gt, LABELS)

    y_pred = one_hot(torch.from_numpy(pred)[None, None], num_classes=k)
    y = one_hot(torch.from_numpy(gt)[None, None], num_classes=k)
    ref = compute_dice(y_pred, y, include_background=False)[0]
    metric = DiceMetric(include_background=False, reduction="none")
    metric(y_pred=y_pred, y=y)
    ref_metric = metric.aggregate()[0]
    for i, name in enumerate(LABELS.values()):
        got = out[name]["dice"]
        if torch.isnan(ref[i]):
            assert got is None and not out[name]["present"]
            assert torch.isnan(ref_metric[i])
        else:
            assert got == pytest.approx(float(ref[i]), abs=1e-6)
            assert got == pytest.approx(float(ref_metric[i]), abs=1e-6)
            # Independent numpy reference: 2|P∩G| / (|P| + |G|).
            p, g = pred == i + 1, gt == i + 1
            assert got == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), abs=1e-6)
    assert out["gallbladder"]["dice"] is None
    assert out["gallbladder"]["predicted_voxels"] == int((pred == 3).sum())


def test_non_contiguous_ids_and_tensor_inputs() -> None:
    labels = {1: "spleen", 6: "liver"}
    gt = torch.zeros(4, 4, 2, dtype=torch.int64)
    gt[0:2, 0:2, 0] = 6
    pred = gt.clone()
    pred[0, 0, 0] = 0  # 3 of 4 liver voxels -> 2*3/(3+4)
    out = dice_per_organ(pred, gt.numpy().astype(np.uint8), labels)
    assert out["liver"]["dice"] == pytest.approx(6 / 7)
    assert out["spleen"]["dice"] is None
    assert encode_classes(gt, labels).max() == 2


def test_bad_inputs() -> None:
    gt = np.zeros((4, 4, 2), dtype=np.int64)
    with pytest.raises(InputError, match="does not match"):
        dice_per_organ(np.zeros((4, 4, 3), dtype=np.int64), gt, LABELS)
    with pytest.raises(InputError, match="integer"):
        dice_per_organ(gt.astype(np.float32), gt, LABELS)
    with pytest.raises(InputError, match=r"\(H, W, Z\)"):
        dice_per_organ(gt[..., 0], gt[..., 0], LABELS)
    bad = gt.copy()
    bad[0, 0, 0] = 9
    with pytest.raises(InputError, match=r"outside the class set"):
        dice_per_organ(gt, bad, LABELS)
    bad[0, 0, 0] = -1
    with pytest.raises(InputError, match=r"outside the class set"):
        dice_per_organ(bad, gt, LABELS)
