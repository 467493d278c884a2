"""Local feature learning: overlap geometry, exact correspondence, closed-form loss, gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models import (
    MoCo,
    ModelConfig,
    local_info_nce,
    local_info_nce_loss,
)
from collapsekit.models.local import (
    close_points,
    local_negative_mask,
    overlap_grid,
    sample_local_features,
)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_overlap_grid_hand_computed() -> None:
    # intersection of (0,0,32,32) and (16,8,48,40) is y∈[16,32), x∈[8,32): cell centres
    # y = 20, 28 and x = 14, 26 (grid 2)
    box1, box2 = _t([[0, 0, 32, 32]]), _t([[16, 8, 48, 40]])
    no, yes = torch.tensor([False]), torch.tensor([True])
    c1, c2, valid = overlap_grid(box1, box2, no, no, grid=2, size=32)
    gx1, gy1 = [-0.125, 0.625], [0.25, 0.75]  # 2 (u − y0)/(y1 − y0) − 1
    gx2, gy2 = [-0.625, 0.125], [-0.75, -0.25]
    expect1 = [[gx1[0], gy1[0]], [gx1[1], gy1[0]], [gx1[0], gy1[1]], [gx1[1], gy1[1]]]
    expect2 = [[gx2[0], gy2[0]], [gx2[1], gy2[0]], [gx2[0], gy2[1]], [gx2[1], gy2[1]]]
    torch.testing.assert_close(c1[0], _t(expect1))
    torch.testing.assert_close(c2[0], _t(expect2))
    assert valid.tolist() == [True]
    _, c2f, _ = overlap_grid(box1, box2, no, yes, grid=2, size=32)  # mirrored view: x -> −x
    torch.testing.assert_close(c2f[0], _t([[-x, y] for x, y in expect2]))


def test_overlap_validity_mask() -> None:
    box1 = _t([[0, 0, 32, 32], [0, 0, 32, 32], [0, 0, 32, 32], [0, 0, 32, 32]])
    box2 = _t([[40, 40, 60, 60], [28, 28, 60, 60], [8, 8, 24, 24], [24, 0, 56, 32]])
    # overlap / smaller area: 0 (disjoint), 16/1024, 1 (contained), 256/1024
    flips = torch.zeros(4, dtype=torch.bool)
    c1, c2, valid = overlap_grid(box1, box2, flips, flips, grid=4, size=32, min_overlap=0.1)
    assert valid.tolist() == [False, False, True, True]
    assert torch.isfinite(c1).all() and torch.isfinite(c2).all()
    assert c1.abs().max() <= 1 and c2.abs().max() <= 1
    _, _, valid0 = overlap_grid(box1, box2, flips, flips, grid=4, size=32, min_overlap=0.0)
    assert valid0.tolist() == [False, True, True, True]  # empty overlap is never valid


def test_sample_local_features_at_pixel_centres_is_exact() -> None:
    fmap = torch.randn(2, 3, 4, 4)
    # pixel (row 1, col 2) centre: x = 2 (2 + .5)/4 − 1, y = 2 (1 + .5)/4 − 1
    coords = torch.tensor([[[0.25, -0.25], [-0.75, 0.75]]]).repeat(2, 1, 1)
    out = sample_local_features(fmap, coords)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[:, 0], fmap[:, :, 1, 2])
    torch.testing.assert_close(out[:, 1], fmap[:, :, 3, 0])


def _pointwise_encoder() -> nn.Module:
    """Identical 'encoders' for both views: per-pixel MLP then stride-4 pooling (equivariant to
    crops on the stride-4 lattice and to flips)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 8, 1), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.AvgPool2d(4))


def test_geometric_views_give_identical_local_features() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 96, 96, generator=g)
    # crops of one synthetic image at known boxes (offsets on the stride-4 lattice), some flipped
    boxes1 = _t([[0, 0, 48, 48], [16, 32, 64, 80], [40, 8, 88, 56]])
    boxes2 = _t([[16, 12, 64, 60], [8, 40, 56, 88], [48, 0, 96, 48]])
    flip1 = torch.tensor([False, True, True])
    flip2 = torch.tensor([True, False, True])

    def crop(boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        views = []
        for (y0, x0, y1, x1), f in zip(boxes.long().tolist(), flips.tolist(), strict=True):
            v = image[0, :, y0:y1, x0:x1]
            views.append(v.flip(-1) if f else v)
        return torch.stack(views)

    view1, view2 = crop(boxes1, flip1), crop(boxes2, flip2)
    enc = _pointwise_encoder()
    c1, c2, valid = overlap_grid(boxes1, boxes2, flip1, flip2, grid=4, size=48)
    assert valid.all()
    with torch.no_grad():
        f1 = sample_local_features(enc(view1), c1)
        f2 = sample_local_features(enc(view2), c2)
    assert f1.shape == (3, 16, 6)
    torch.testing.assert_close(f1, f2, atol=1e-6, rtol=1e-5)
    # the correspondence is not trivial: unrelated points differ
    assert not torch.allclose(f1, f2.roll(1, dims=1), atol=1e-3)
    # forgetting the flip breaks it
    _, c2_noflip, _ = overlap_grid(boxes1, boxes2, flip1, torch.zeros(3, dtype=torch.bool), 4, 48)
    with torch.no_grad():
        f2_wrong = sample_local_features(enc(view2), c2_noflip)
    assert not torch.allclose(f1[0], f2_wrong[0], atol=1e-3)


def test_local_info_nce_closed_form() -> None:
    # N orthonormal points with q = k: logits are I/T, loss = log(1 + (N − 1 + K_eff) e^{−1/T})
    n, t = 6, 0.2
    q = torch.eye(8)[:n]
    loss, logits, labels = local_info_nce(q, q.clone(), None, t)
    assert logits.shape == (n, n) and labels.tolist() == list(range(n))
    assert loss.item() == pytest.approx(math.log(1 + (n - 1) * math.exp(-1 / t)), rel=1e-6)
    queue = torch.eye(8)[n:].T  # 2 queued keys orthogonal to every query
    loss_q, logits_q, _ = local_info_nce(q, q.clone(), queue, t)
    assert logits_q.shape == (n, n + 2)
    assert loss_q.item() == pytest.approx(math.log(1 + (n + 1) * math.exp(-1 / t)), rel=1e-6)


@pytest.mark.parametrize("method", ["local", "local+zca"])
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_local_loss_alone_reaches_the_backbone(method: str, layer: str) -> None:
    # both: at 32 px layer4 is 1×1, every point of an image is one cell (no same-image negative)
    cfg = ModelConfig(
        method=method,
        queue_size=16,
        local_queue_size=64,
        local_layer=layer,
        local_negatives="both",
    )
    model = MoCo(cfg)
    b = 4
    box1 = _t([[0, 0, 48, 48]]).repeat(b, 1)
    batch = {
        "view1": torch.rand(b, 1, 32, 32),
        "view2": torch.rand(b, 1, 32, 32),
        "box1": box1,
        "box2": box1 + 12,
        "flip1": torch.zeros(b, dtype=torch.bool),
        "flip2": torch.ones(b, dtype=torch.bool),
    }
    out = model(batch)
    assert out.loss_local is not None
    out.loss_local.backward()
    bb = model.encoder_q.backbone
    last = bb.layer3[-1] if layer == "layer3" else bb.layer4[-1]
    for p in (bb.conv1.weight, bb.layer1[0].conv1.weight, last.conv2.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert model.encoder_q.projector.fc1.weight.grad is None  # only the local path was used
    head = model.encoder_q.local_head
    assert head is not None and head.fc1.weight.grad.abs().sum() > 0


def test_no_valid_pair_gives_zero_local_loss_with_a_graph() -> None:
    model = MoCo(
        ModelConfig(
            method="local", queue_size=16, local_queue_size=64, local_negatives="other_images"
        )
    )
    b = 4
    batch = {
        "view1": torch.rand(b, 1, 32, 32),
        "view2": torch.rand(b, 1, 32, 32),
        "box1": _t([[0, 0, 10, 10]]).repeat(b, 1),
        "box2": _t([[20, 20, 30, 30]]).repeat(b, 1),
        "flip1": torch.zeros(b, dtype=torch.bool),
        "flip2": torch.zeros(b, dtype=torch.bool),
    }
    out = model(batch)
    assert out.loss_local is not None and out.loss_local.item() == 0.0
    assert out.local_valid_fraction == 0.0
    assert model.local_queue is not None and model.local_queue.ptr.item() == 0
    out.loss.backward()
    assert torch.isfinite(
        F.normalize(model.encoder_q.backbone.conv1.weight.grad.flatten(), dim=0)
    ).all()


def test_correspondence_matches_the_data_layer_resized_crop() -> None:
    """Views from ``collapsekit.data.augment.resized_crop`` (non-integer zoom, flips) of a linear
    ramp image: a linear encoder with stride 4 makes the sampled features exactly equal."""
    from collapsekit.data.augment import resized_crop

    yy, xx = torch.meshgrid(torch.arange(128.0) + 0.5, torch.arange(128.0) + 0.5, indexing="ij")
    image = torch.stack([0.02 * yy - 0.01 * xx, 0.005 * xx + 1.0])  # (2, 128, 128), linear
    boxes1 = _t([[10.0, 12.0, 70.5, 66.0], [30.0, 40.0, 110.0, 120.0]])
    boxes2 = _t([[25.0, 20.0, 90.0, 97.0], [2.0, 30.0, 80.0, 100.0]])
    flip1 = torch.tensor([False, True])
    flip2 = torch.tensor([True, True])

    def views(boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        out = [resized_crop(image, b, 32) for b in boxes]
        return torch.stack(
            [v.flip(-1) if f else v for v, f in zip(out, flips.tolist(), strict=True)]
        )

    torch.manual_seed(4)
    enc = nn.Sequential(nn.Conv2d(2, 5, 1), nn.AvgPool2d(4))  # linear, stride 4
    c1, c2, valid = overlap_grid(boxes1, boxes2, flip1, flip2, grid=3, size=32)
    assert valid.all()
    with torch.no_grad():
        f1 = sample_local_features(enc(views(boxes1, flip1)), c1)
        f2 = sample_local_features(enc(views(boxes2, flip2)), c2)
    torch.testing.assert_close(f1, f2, atol=1e-4, rtol=1e-4)
    assert (f1[:, 0] - f1[:, -1]).abs().max() > 0.1  # points really differ


def test_local_info_nce_excludes_same_image_negatives() -> None:
    # two images of P=2 points; with exclusion each row keeps its positive + the other image's
    # points + the queue, and the loss equals a hand-written log-softmax over those columns
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(8, 3, generator=g, dtype=torch.float64), dim=0)
    t = 0.2
    loss, logits, labels = local_info_nce(
        q, k, queue, t, exclude=local_negative_mask(4, 4, 2, "other_images")
    )
    expected = 0.0
    for n in range(4):
        same_img = {2 * (n // 2), 2 * (n // 2) + 1} - {n}
        cols = [j for j in range(4) if j not in same_img]
        row = torch.cat([q[n] @ k[cols].T, q[n] @ queue]) / t
        expected += -(row[cols.index(n)] - torch.logsumexp(row, 0)).item()
    assert loss.item() == pytest.approx(expected / 4, rel=1e-12)
    assert torch.isinf(logits[0, 1]) and torch.isfinite(logits[0, 2:]).all()
    # one image, no queue: only the positive is left, the loss is exactly 0
    zero, _, _ = local_info_nce(
        q[:2], k[:2], None, t, exclude=local_negative_mask(2, 2, 2, "other_images")
    )
    assert zero.item() == 0.0
    # DDP offset: a rank whose points start at 2 excludes its own image (columns 2, 3)
    mask_off = local_negative_mask(2, 4, 2, "other_images", offset=2)
    l_off, logits_off, _ = local_info_nce(q[2:], k, None, t, offset=2, exclude=mask_off)
    assert torch.isinf(logits_off[0, 3]) and torch.isfinite(logits_off[0, :3]).all()
    assert l_off.item() == pytest.approx(
        F.cross_entropy(logits[2:, :4], labels[2:]).item(), rel=1e-12
    )


def test_close_points_in_feature_cells() -> None:
    # x steps of 0.25 normalised on an 8-wide map are 1 cell (a step of 2 spans the map)
    coords = torch.tensor([[[-0.75, 0.0], [-0.5, 0.0], [0.25, 0.0], [0.25, 0.5]]])
    close = close_points(coords, (8, 8), 1.0)
    # distances in cells: 0-1: 1, 0-2: 4, 2-3: 2 (y step 0.5 on an 8-high map), 1-3: √(3²+2²)
    assert not close[0, 0, 1] and not close[0, 0, 2] and not close[0, 2, 3]
    assert close[0].diagonal().all()
    assert close_points(coords, (8, 8), 1.01)[0, 0, 1]
    assert close_points(coords, (8, 4), 1.01)[0, 2, 3] is not None
    assert close_points(coords, (4, 8), 1.01)[0, 2, 3]  # 0.5 on a 4-high map: 1 cell
    assert not close_points(coords, (4, 8), 1.0)[0, 2, 3]


def test_local_negative_mask_closed_form() -> None:
    # two images of P = 3 points; rows and columns 0-2 are image 0, 3-5 image 1
    other = local_negative_mask(6, 6, 3, "other_images")
    assert other is not None
    assert other[0].tolist() == [False, True, True, False, False, False]
    assert other[4].tolist() == [False, False, False, True, False, True]
    same = local_negative_mask(6, 6, 3, "same_image")
    assert same is not None
    assert same[0].tolist() == [False, False, False, True, True, True]
    assert same[5].tolist() == [True, True, True, False, False, False]
    both = local_negative_mask(6, 6, 3, "both")
    assert both is None  # nothing excluded: every other point is a negative
    # points 0 and 1 of image 0 are too close; point 2 of image 1 is close to point 0
    close = torch.eye(3, dtype=torch.bool).repeat(2, 1, 1)
    close[0, 0, 1] = close[0, 1, 0] = True
    close[1, 2, 0] = close[1, 0, 2] = True
    same = local_negative_mask(6, 6, 3, "same_image", close=close)
    both = local_negative_mask(6, 6, 3, "both", close=close)
    assert same is not None and both is not None
    assert same[0].tolist() == [False, True, False, True, True, True]
    assert same[2].tolist() == [False, False, False, True, True, True]
    assert both[0].tolist() == [False, True, False, False, False, False]
    assert both[3].tolist() == [False, False, False, False, False, True]
    assert not both.diagonal().any() and not same.diagonal().any()  # positives stay
    # under DDP: this rank's 3 query points are image 1 (offset 3) of 6 gathered key points
    ranked = local_negative_mask(3, 6, 3, "same_image", offset=3, close=close[1:])
    assert ranked is not None
    assert ranked[0].tolist() == [True, True, True, False, False, True]


def test_local_info_nce_with_same_image_negatives_equals_the_hand_written_loss() -> None:
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    close = torch.eye(3, dtype=torch.bool).repeat(2, 1, 1)
    close[0, 0, 1] = close[0, 1, 0] = True
    exclude = local_negative_mask(6, 6, 3, "same_image", close=close)
    t = 0.2
    loss, _, _ = local_info_nce(q, k, None, t, exclude=exclude)
    fused = local_info_nce_loss(q, k, None, t, exclude=exclude)
    expected = 0.0
    for n in range(6):
        img = n // 3
        cols = [j for j in range(3 * img, 3 * img + 3) if j == n or not close[img, n % 3, j % 3]]
        row = q[n] @ k[cols].T / t
        expected += -(row[cols.index(n)] - torch.logsumexp(row, 0)).item()
    assert loss.item() == pytest.approx(expected / 6, rel=1e-12)
    assert fused.item() == pytest.approx(expected / 6, rel=1e-12)
    # rows 0 and 1 keep one negative (point 2); row 2 keeps two: ln(1 + e^{Δ/T}) forms
    assert expected > 0


def test_moco_excludes_same_image_points_closer_than_the_minimum_distance() -> None:
    """Identical 64-px crops: the 4×4 grid points are 0.5 apart (normalised), 1 cell of the 4×4
    layer3 map. With a minimum of 1.5 cells the 3 points next to a corner point (at 1 and √2
    cells) are not its negatives; the 12 others are."""
    cfg = ModelConfig(
        method="local", queue_size=16, local_negatives="same_image", local_min_distance=1.5
    )
    model = MoCo(cfg)
    b = 2
    box = _t([[0, 0, 64, 64]]).repeat(b, 1)
    batch = {
        "view1": torch.rand(b, 1, 64, 64),
        "view2": torch.rand(b, 1, 64, 64),
        "box1": box,
        "box2": box.clone(),
        "flip1": torch.zeros(b, dtype=torch.bool),
        "flip2": torch.zeros(b, dtype=torch.bool),
    }
    fmap = torch.zeros(b, 256, 4, 4)  # layer3 at 64 px
    exclude = model._exclude(batch, 32, 32, 0, fmap)
    assert exclude is not None
    kept = (~exclude).sum(1)
    assert kept[0].item() == 16 - 3  # corner point: positive + 12 negatives
    assert kept[5].item() == 16 - 8  # inner point (1, 1): 8 neighbours within 1.5 cells
    assert exclude[0, 16:].all()  # no point of the other image
    model_1 = MoCo(ModelConfig(method="local", queue_size=16, local_min_distance=1.0))
    exclude_1 = model_1._exclude(batch, 32, 32, 0, fmap)
    assert exclude_1 is not None and (~exclude_1[:, :16]).sum(1)[0].item() == 16  # 1 cell is kept
