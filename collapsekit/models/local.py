"""Local feature learning: corresponding points of two crops and a per-point InfoNCE.

Hassanpour et al. (ISBI 2024, arXiv 2402.14611) add "a contrastive objective on local patches of
the feature maps" to MoCo v2. Their public code gives the local loss no gradient and no spatial
correspondence, so collapsekit defines it from the crop geometry recorded by the two-view
augmentation (as in DenseCL / PixPro-style dense contrastive learning, Wang et al. 2021, Xie et
al. 2021):

1. :func:`overlap_grid`: a ``G×G`` grid of points evenly inside the intersection of the two crop
   boxes (source pixel coordinates), mapped to each view's normalised ``grid_sample`` coordinates
   (mirrored for a flipped view), plus a mask of pairs whose overlap is large enough;
2. :func:`sample_local_features`: bilinear sampling of each view's final feature map at its points;
3. :func:`local_info_nce`: per point, positive = the same point in the other view's key features;
   which other points are negatives is named by :data:`LOCAL_NEGATIVES` and built by
   :func:`local_negative_mask`:

   * ``same_image`` — the other points of the *same* image (the paper: "differentiating between the
     local regions within the feature maps"; the first author's code), no queue;
   * ``other_images`` — the points of the other images of the batch and a queue of past local keys
     (DenseCL/PixPro); the local loss is then a second "which slice is this from?" task;
   * ``both`` — the union.

   Same-image points closer to the positive than ``min_distance`` feature cells (in either view;
   :func:`close_points`) are never negatives: bilinear samples that close blend the same cells, so
   pushing them apart asks for position cues rather than content.

Coordinate convention: a box ``(y0, x0, y1, x1)`` is the continuous source region
``[y0, y1) × [x0, x1)`` (source pixel ``i`` covers ``[i, i + 1)``) resampled to the square view,
optionally mirrored left-right after resampling. With ``align_corners=False`` the normalised
coordinate of a source point ``u`` in a view is ``2 (u − y0) / (y1 − y0) − 1``, independent of the
view and feature-map resolution (a stride-``s`` feature map covers the same extent).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from collapsekit.options import look_up_option

__all__ = [
    "LOCAL_NEGATIVES",
    "close_points",
    "local_info_nce",
    "local_info_nce_loss",
    "local_negative_mask",
    "overlap_grid",
    "sample_local_features",
]

#: Which points are a local query's negatives (see the module docstring).
LOCAL_NEGATIVES = ("same_image", "other_images", "both")


def _to_view(
    py: torch.Tensor, px: torch.Tensor, box: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Source points ``(B, P)`` -> normalised ``(x, y)`` view coordinates ``(B, P, 2)``."""
    y0, x0, y1, x1 = (box[:, i : i + 1] for i in range(4))
    gy = 2.0 * (py - y0) / (y1 - y0).clamp_min(1e-6) - 1.0
    gx = 2.0 * (px - x0) / (x1 - x0).clamp_min(1e-6) - 1.0
    gx = torch.where(flip.to(torch.bool).reshape(-1, 1), -gx, gx)  # mirrored view
    return torch.stack([gx, gy], dim=-1).clamp(-1.0, 1.0)


def overlap_grid(
    box1: torch.Tensor,
    box2: torch.Tensor,
    flip1: torch.Tensor,
    flip2: torch.Tensor,
    grid: int,
    size: int,
    min_overlap: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corresponding points of two crops: a ``grid × grid`` lattice inside their overlap.

    The intersection ``[iy0, iy1) × [ix0, ix1)`` of the boxes is split into ``grid × grid`` equal
    cells and the points are the cell centres, ``iy0 + (i + ½)(iy1 − iy0)/grid``, listed row-major
    (``P = grid²``, y outer, x inner). Each point is mapped to both views (see the module docstring).

    Args:
        box1, box2: ``(B, 4)`` crop boxes ``(y0, x0, y1, x1)`` in source pixel coordinates.
        flip1, flip2: ``(B,)`` bool, whether the view was mirrored left-right.
        grid: points per side ``G``.
        size: side of the square views in pixels. The normalised coordinates do not depend on it
            (``align_corners=False``); it is checked to be positive.
        min_overlap: a pair is valid when ``area(box1 ∩ box2) / min(area1, area2) ≥ min_overlap``
            and the intersection is not empty.

    Returns:
        ``coords1, coords2``: ``(B, P, 2)`` in ``[-1, 1]``, ``(x, y)`` order as ``grid_sample``
        expects; ``valid``: ``(B,)`` bool. Pairs without overlap get finite (meaningless) points.
    """
    if grid < 1 or size < 1:
        raise ValueError(f"grid and size must be >= 1, got grid={grid}, size={size}")
    if box1.shape != box2.shape or box1.dim() != 2 or box1.shape[1] != 4:
        raise ValueError(
            f"expected two (B, 4) boxes, got shapes {tuple(box1.shape)} and {tuple(box2.shape)}"
        )
    dtype = box1.dtype if box1.is_floating_point() else torch.float32
    b1, b2 = box1.to(dtype), box2.to(dtype)
    lo = torch.maximum(b1[:, :2], b2[:, :2])  # (iy0, ix0)
    hi = torch.minimum(b1[:, 2:], b2[:, 2:])
    ext = (hi - lo).clamp_min(0.0)  # (ih, iw)
    inter = ext[:, 0] * ext[:, 1]
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    frac = inter / torch.minimum(area1, area2).clamp_min(1e-12)
    valid = (inter > 0) & (frac >= min_overlap)

    t = (torch.arange(grid, dtype=dtype, device=b1.device) + 0.5) / grid  # (G,)
    ys = lo[:, 0:1] + t * ext[:, 0:1]  # (B, G)
    xs = lo[:, 1:2] + t * ext[:, 1:2]
    py = ys[:, :, None].expand(-1, grid, grid).reshape(-1, grid * grid)  # row-major
    px = xs[:, None, :].expand(-1, grid, grid).reshape(-1, grid * grid)
    return _to_view(py, px, b1, flip1), _to_view(py, px, b2, flip2), valid


def sample_local_features(fmap: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample a feature map at normalised points.

    Args:
        fmap: ``(B, C, h, w)`` feature map.
        coords: ``(B, P, 2)`` points in ``[-1, 1]``, ``(x, y)`` order (``align_corners=False``).

    Returns:
        ``(B, P, C)`` features (border padding, so points near the edge are not darkened).
    """
    if (
        fmap.dim() != 4
        or coords.dim() != 3
        or coords.shape[-1] != 2
        or coords.shape[0] != fmap.shape[0]
    ):
        raise ValueError(
            f"expected (B, C, h, w) features and (B, P, 2) points, got {tuple(fmap.shape)} "
            f"and {tuple(coords.shape)}"
        )
    out = F.grid_sample(
        fmap,
        coords.to(fmap.dtype).unsqueeze(2),  # (B, P, 1, 2)
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # (B, C, P, 1)
    return out.squeeze(-1).transpose(1, 2)


def local_info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
    offset: int = 0,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-point InfoNCE with in-batch and queued negatives.

    For point ``n``: ``logits_n = [q_n·k_1, …, q_n·k_M | q_n·queue] / T`` with label ``n + offset``:
    the positive is the same point in the other view, the negatives are the other key points not
    excluded plus the queue. ``loss = −(1/N) Σ_n log softmax(logits_n)_{n + offset}``. Excluded
    key points get the logit ``−∞`` (:func:`local_negative_mask` builds the mask).

    Args:
        q: ``(N, D)`` L2-normalised query points (valid pairs only).
        k: ``(M, D)`` L2-normalised key points (no gradient needed).
        queue: ``(D, K)`` past keys, or ``None``.
        temperature: ``T``.
        offset: index in ``k`` of the positive of ``q[0]``. Under DDP ``k`` holds the key points of
            every rank (so each rank sees the negatives one process would see) and ``offset`` is the
            number of key points on the ranks before this one; 0 on one process.
        exclude: ``(N, M)`` bool, key points that are not negatives of a row (never its
            positive), or ``None`` to keep every key point.

    Returns:
        ``loss`` (scalar), ``logits`` ``(N, M + K)`` and ``labels`` ``(N,)``. A row whose
        negatives are all excluded (and no queue) has only its positive: its loss is 0.
    """
    logits = q @ k.t()  # q: N×D, k: M×D -> N×M
    labels = torch.arange(q.shape[0], device=q.device) + offset
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    if queue is not None:
        logits = torch.cat([logits, q @ queue], dim=1)  # q: N×D, queue: D×K
    logits = logits / temperature
    return F.cross_entropy(logits, labels), logits, labels


def close_points(
    coords: torch.Tensor, fmap_size: tuple[int, int], min_distance: float
) -> torch.Tensor:
    """Which points of one image lie closer than ``min_distance`` feature cells to each other.

    Args:
        coords: ``(I, P, 2)`` normalised ``(x, y)`` points of ``I`` images in one view (the
            :func:`overlap_grid` output), ``align_corners=False``.
        fmap_size: ``(h, w)`` of the feature map they are sampled from: a normalised step of 2
            spans the map, so ``Δ`` normalised is ``Δ · w / 2`` cells along x.
        min_distance: threshold in cells (Euclidean).

    Returns:
        ``(I, P, P)`` bool, ``[i, a, b]`` true when points ``a`` and ``b`` of image ``i`` are closer
        than ``min_distance`` cells (the diagonal is true for ``min_distance > 0``).
    """
    h, w = fmap_size
    scale = torch.tensor([w / 2.0, h / 2.0], dtype=coords.dtype, device=coords.device)
    cells = coords * scale
    dist = torch.cdist(cells, cells)  # (I, P, P)
    return dist < min_distance


def local_negative_mask(
    n_queries: int,
    n_keys: int,
    points_per_image: int,
    negatives: str,
    offset: int = 0,
    close: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """The ``exclude`` mask of :func:`local_info_nce`: which key points are *not* negatives.

    Query row ``n`` has the label (positive column) ``n + offset``; rows and key columns are
    grouped by image in blocks of ``P = points_per_image`` (column ``j`` belongs to image
    ``j // P``).

    * ``other_images``: the other points of the row's own image are excluded;
    * ``same_image``: every point of another image is excluded, and so are the own image's points
      marked in ``close`` (the queue is not used either: the caller passes none);
    * ``both``: only the own image's points marked in ``close`` are excluded.

    The positive is never excluded.

    Args:
        n_queries, n_keys: ``N`` and ``M``.
        points_per_image: ``P``.
        negatives: one of :data:`LOCAL_NEGATIVES`.
        offset: the label of row 0 (the key points of earlier ranks under DDP).
        close: ``(N / P, P, P)`` bool from :func:`close_points` for the query rows' images (the
            same image order as the rows); ``None``: no point is too close.
        device: where to build the mask.

    Returns:
        ``(N, M)`` bool, or ``None`` when nothing is excluded.
    """
    negatives = look_up_option(negatives, LOCAL_NEGATIVES, "local negatives")
    p = points_per_image
    labels = torch.arange(n_queries, device=device) + offset
    cols = torch.arange(n_keys, device=device)
    same = (labels // p)[:, None] == (cols // p)[None, :]
    positive = labels[:, None] == cols[None, :]
    if negatives == "other_images":
        return same & ~positive
    near = torch.zeros(n_queries, n_keys, dtype=torch.bool, device=device)
    if close is not None:
        if close.shape != (n_queries // p, p, p):
            raise ValueError(
                f"expected close of shape {(n_queries // p, p, p)}, got {tuple(close.shape)}"
            )
        own = (labels // p * p)[:, None] + torch.arange(p, device=device)[None, :]  # (N, P)
        near.scatter_(1, own, close.reshape(n_queries, p).to(device))
    if negatives == "same_image":
        return (~same | near) & ~positive
    if not bool(near.any()):
        return None
    return near & ~positive


class _BankCrossEntropy(torch.autograd.Function):
    """``mean_n CE(z_n B, y_n)`` over a key bank ``B``, differentiated for ``z`` only.

    Forward keeps one ``(N, M + K)`` buffer: logits, then (in the saved ``log p``) their log-softmax;
    backward is ``∂z = (softmax − onehot) Bᵀ / N``, without autograd's chain of copies (the
    concatenation, division, log-softmax and NLL nodes each hold an ``(N, M + K)`` tensor).
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        bank: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        logits = z @ bank  # z: N×D, bank: D×(M+K) -> N×(M+K)
        if mask is not None:
            logits[:, : mask.shape[1]].masked_fill_(mask, float("-inf"))
        logp = torch.log_softmax(logits, dim=1)
        del logits
        ctx.save_for_backward(logp, bank, labels)
        return -logp.gather(1, labels[:, None]).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logp, bank, labels = ctx.saved_tensors
        n = logp.shape[0]
        with torch.autocast(device_type=logp.device.type, enabled=False):
            g = logp.exp()  # softmax; masked logits give exactly 0
            g[torch.arange(n, device=g.device), labels] -= 1.0
            g.mul_(grad.to(g.dtype) / n)
            return g @ bank.t(), None, None, None


def local_info_nce_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float,
    offset: int = 0,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of :func:`local_info_nce` (same arguments), computed for speed.

    The same value and gradient for ``q`` (to float rounding): ``1/T`` scales the ``(N, D)``
    queries instead of the ``(N, M + K)`` logits, the keys and the queue are copied once into one
    ``(D, M + K)`` bank (so the caller need not clone a queue it updates in place before
    ``backward``), and the cross-entropy is one autograd node holding one ``(N, M + K)`` buffer.
    ``k`` and ``queue`` get no gradient. The math runs in float32 (float64 for float64 ``q``) with
    autocast disabled, like the ZCA layer; ``q``'s gradient comes back in ``q``'s dtype. About 2×
    faster than :func:`local_info_nce` at ``N = M = 480``, ``K = 16384`` on a CPU (one profiled
    run). Not twice differentiable.

    Returns:
        The scalar loss.
    """
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    labels = torch.arange(q.shape[0], device=q.device) + offset
    mask = exclude
    keys = k.detach().t().to(dtype)  # D×M
    bank = keys.contiguous() if queue is None else torch.cat([keys, queue.detach().to(dtype)], 1)
    with torch.autocast(device_type=q.device.type, enabled=False):
        out: torch.Tensor = _BankCrossEntropy.apply(q.to(dtype) / temperature, bank, labels, mask)
    return out
