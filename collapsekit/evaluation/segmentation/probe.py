"""Linear probe for segmentation: a 1×1 convolution on a frozen backbone's final feature map.

The paper's measure of representation quality "without relying on decoder complexity"
(Hassanpour et al., ISBI 2024, arXiv 2402.14611, Sec. 3; mmsegmentation linear head). Procedure:

1. The backbone is deep-copied, put in eval mode (BatchNorm and ZCA whitening use their running
   statistics), frozen (``requires_grad=False``) and optionally dilated to output stride 8 or 16
   (DeepLab-style, like the r50-d8 of mmsegmentation). The caller's module is never touched.
2. Every axial training slice listed in ``Volume.slices`` is resized (bilinear, antialiased: the
   one slice resize) to
   ``image_size × image_size`` and encoded under ``no_grad`` into ``(C, S/os, S/os)`` features. Without
   augmentation the features are computed once and cached (memory tensor or a disk ``np.memmap``), so
   an epoch costs only the head.
3. The head is ``BatchNorm2d(C, affine=False)`` followed by ``Conv2d(C, K, 1)`` (MAE-style linear
   probing, He et al. 2022: the normalisation is a per-channel affine map, so the probe stays linear
   in the features). Its logits are bilinearly upsampled to ``S × S`` and trained with
   cross-entropy (+ optional soft Dice, :class:`monai.losses.DiceLoss`) against the nearest-resized
   labels, Adam with a cosine schedule; the conv starts at zero, so the problem is convex and
   deterministic.
4. Every slice of each validation volume (all ``Z`` slices, including those the data layer marked as
   "no body": the evaluation must not depend on that heuristic) is encoded, its logits upsampled
   bilinearly straight to the native in-plane size ``(H, W)``, argmaxed, and the slices are stacked
   back into an ``(H, W, Z)`` label map scored per organ in 3D by :func:`dice_per_organ`.

Classes are ``0`` (background) plus the ids of ``labels`` (14 for BTCV), mapped to contiguous indices
internally and back to the dataset's ids in predictions.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.data.validate import check_labelled
from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError
from collapsekit.evaluation.segmentation._data import (
    augment_slices,
    check_options,
    select_fraction,
    training_slices,
)
from collapsekit.evaluation.segmentation.fit import fit, schedule_steps, segmentation_loss
from collapsekit.evaluation.segmentation.predict import check_encodes, predict_volumes
from collapsekit.evaluation.segmentation.scoring import SegmentationResult, score_predictions
from collapsekit.options import look_up_option
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit

__all__ = ["ProbeConfig", "linear_probe"]

CACHE_MODES = ("memory", "disk", "none")


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of :func:`linear_probe`.

    Attributes:
        epochs: passes over the training slices.
        lr: Adam learning rate of the head (cosine-annealed to 0 over all steps).
        weight_decay: Adam weight decay of the head.
        batch_size: slices per step (training and encoding).
        image_size: side ``S`` every slice is resized to; a multiple of 32.
        output_stride: 8, 16 or 32; below 32 the last stages are dilated (feature map ``S/os``).
        dice_loss: add MONAI's soft Dice loss (background excluded) to the cross-entropy.
        label_fraction: fraction of the training volumes used, in (0, 1]; a deterministic subset
            (seeded permutation of the case ids), at least one volume.
        seed: seeds the subset, the shuffling and the augmentation.
        cache: ``memory``, ``disk`` (``np.memmap`` under ``cache_dir``) or ``none`` (re-encode
            every epoch). Ignored when ``augment`` is set, since augmented slices must be
            re-encoded.
        cache_dir: directory of the disk cache (a temporary directory when ``None``).
        augment: random scale/shift and intensity jitter of training slices (no flips: CT has a
            left and a right kidney).

    Raises:
        ConfigError: a value out of range or an unknown cache mode.
    """

    epochs: int = 20
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int = 32
    image_size: int = 128
    output_stride: int = 32
    dice_loss: bool = False
    label_fraction: float = 1.0
    seed: int = 0
    cache: str = "memory"
    cache_dir: str | None = None
    augment: bool = False

    def __post_init__(self) -> None:
        check_options(self)
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
        object.__setattr__(self, "cache", look_up_option(self.cache, CACHE_MODES, "cache mode"))

    @property
    def caches_features(self) -> bool:
        """Whether features are computed once and reused (no augmentation, cache enabled)."""
        return not self.augment and self.cache != "none"


class LinearHead(nn.Module):
    """``BatchNorm2d(C, affine=False)`` then a zero-initialised ``Conv2d(C, K, 1)``.

    ``(B, C, h, w) -> (B, K, h, w)``. In eval mode the normalisation uses running statistics, so
    the whole head is one affine map per location (a linear probe).
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, affine=False)
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(cast(torch.Tensor, self.conv.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def bilinear_matrix(n_in: int, n_out: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``(n_out, n_in)`` matrix of 1-D linear resampling (``align_corners=False``).

    Bilinear upsampling is separable: ``F.interpolate(x, (S, S), mode="bilinear")`` equals
    ``A_h @ x @ A_w.T`` with these matrices (to float rounding). As two small GEMMs its backward
    is about twice as fast on CPU as ``upsample_bilinear2d_backward``, which dominates a cached
    probe epoch.
    """
    eye = torch.eye(n_in, device=device)[None]  # (1, n_in, n_in): one basis signal per channel
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def forward_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``backbone.forward_features(x)``: ``(B, 1, S, S) -> (B, C, S/os, S/os)``."""
    fn = cast(Callable[[torch.Tensor], torch.Tensor], backbone.forward_features)
    return fn(x)


def frozen_backbone(
    backbone: nn.Module, output_stride: int = 32, device: str | torch.device = "cpu"
) -> nn.Module:
    """A frozen copy of ``backbone``: deep-copied, dilated to ``output_stride``, eval mode, no grads.

    Args:
        backbone: any module with ``forward_features(x) -> (B, C, h, w)`` (and ``dilate(os)`` when
            ``output_stride`` differs from its ``stride``, default 32).
        output_stride: 8, 16 or 32.
        device: where the copy lives.

    Raises:
        ConfigError: dilation requested from a backbone without ``dilate``.
    """
    bb = copy.deepcopy(backbone)
    if output_stride != getattr(bb, "stride", 32):
        dilate = getattr(bb, "dilate", None)
        if dilate is None:
            raise ConfigError(
                f"output_stride {output_stride} needs a backbone with dilate(); "
                f"{type(backbone).__name__} has none"
            )
        dilate(output_stride)
    bb.to(device).eval()
    bb.requires_grad_(False)
    return bb


def encode_slices(
    backbone: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    *,
    out: torch.Tensor | np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    task: str = "encode",
) -> torch.Tensor | np.ndarray:
    """Final feature maps of ``(N, 1, S, S)`` slices, batch by batch under ``no_grad``.

    Args:
        backbone: a frozen backbone (see :func:`frozen_backbone`).
        images: ``(N, 1, S, S)`` float32 slices (any device).
        batch_size: slices per forward pass.
        out: optional preallocated ``(N, C, h, w)`` float32 tensor or ``np.memmap`` to fill.
        progress: receives ``TaskStarted/TaskAdvanced/TaskFinished`` for ``task``.

    Returns:
        ``out``, or a new CPU float32 tensor ``(N, C, h, w)``.
    """
    device = next(iter(backbone.parameters())).device
    n = images.shape[0]
    emit(progress, TaskStarted(task, total=n, description=f"encoding {n} slices"))
    chunks = []
    for i in range(0, n, batch_size):
        with torch.no_grad():
            f = forward_features(backbone, images[i : i + batch_size].to(device)).float().cpu()
        if out is None:
            chunks.append(f)
        elif isinstance(out, np.ndarray):
            out[i : i + f.shape[0]] = f.numpy()
        else:
            out[i : i + f.shape[0]] = f
        emit(progress, TaskAdvanced(task, f.shape[0]))
    emit(progress, TaskFinished(task))
    return torch.cat(chunks) if out is None else out


class _FeatureCache:
    """The frozen features of the training slices, in memory or in a disk ``np.memmap``.

    A context manager: the disk file (and a temporary directory it created) is removed on exit.
    ``features`` stays ``None`` when the probe re-encodes every epoch.
    """

    def __init__(self, cfg: ProbeConfig, n: int, feat_shape: tuple[int, ...]) -> None:
        self.cfg, self.n, self.feat_shape = cfg, n, feat_shape
        self.features: torch.Tensor | np.ndarray | None = None
        self.tmpdir: str | None = None
        self.path: Path | None = None
        self.nbytes = 0

    def __enter__(self) -> _FeatureCache:
        return self

    def fill(self, bb: nn.Module, images: torch.Tensor, progress: ProgressCallback | None) -> None:
        """Encode ``images`` once into the cache."""
        cfg = self.cfg
        if cfg.cache == "disk":
            root = cfg.cache_dir
            if not root:
                root = self.tmpdir = tempfile.mkdtemp(prefix="collapsekit-probe-")
            Path(root).mkdir(parents=True, exist_ok=True)
            self.path = Path(root) / f"probe-features-{time.time_ns()}.npy"
            self.features = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.float32, shape=(self.n, *self.feat_shape)
            )
        self.features = encode_slices(
            bb, images, cfg.batch_size, out=self.features, progress=progress, task="probe/encode"
        )
        self.nbytes = int(self.features.nbytes)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """The cached features of slices ``idx`` (sorted indices: sequential disk reads)."""
        assert self.features is not None
        if isinstance(self.features, np.ndarray):
            return torch.from_numpy(np.asarray(self.features[idx.numpy()]))
        return self.features[idx]

    def __exit__(self, *exc: object) -> None:
        self.features = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def linear_probe(
    backbone: nn.Module,
    train: Sequence[Volume],
    val: Sequence[Volume],
    labels: Mapping[int, str],
    cfg: ProbeConfig | None = None,
    *,
    name: str = "model",
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    save_predictions: str | Path | None = None,
) -> SegmentationResult:
    """Train a 1×1-conv probe on a frozen backbone and score it per organ in 3D (see module doc).

    Args:
        backbone: any module with ``forward_features(x) -> (B, C, h, w)`` and ``dilate(os)``
            (e.g. :class:`~collapsekit.models.backbone.Backbone`); it is copied, never modified.
        train: labelled training volumes (slices in ``Volume.slices`` are used).
        val: labelled validation volumes (every slice is predicted).
        labels: organ id -> name (``BTCV_LABELS`` for BTCV); the classes are 0 plus these ids.
        cfg: a :class:`ProbeConfig` (defaults when ``None``).
        name: display name stored in the result.
        device: torch device for the backbone and the head.
        progress: receives encoding, per-epoch (``loss``) and prediction events.
        save_predictions: directory for ``<case_id>_pred.nii.gz`` label maps written with each
            validation volume's ``affine``.

    Returns:
        A :class:`SegmentationResult` with per-organ, per-volume and mean Dice.

    Raises:
        DataError: a case without labels, image/label shape mismatch, label values outside the
            class set, an empty split, a backbone that cannot encode 1-channel slices.
        ConfigError: dilation requested from a backbone without ``dilate``.
    """
    cfg = cfg or ProbeConfig()
    dev = torch.device(device)
    check_labelled(train, val, labels, what="linear probe")
    train_used = select_fraction(train, cfg.label_fraction, cfg.seed)
    bb = frozen_backbone(backbone, cfg.output_stride, dev)
    feat_shape = check_encodes(
        lambda x: forward_features(bb, x),
        cfg.image_size,
        dev,
        getattr(backbone, "in_channels", None),
    )
    num_classes = len(labels) + 1
    images, targets = training_slices(train_used, labels, cfg.image_size)
    n = images.shape[0]

    gen = torch.Generator().manual_seed(cfg.seed)
    head = LinearHead(feat_shape[0], num_classes).to(dev)
    up_h = bilinear_matrix(feat_shape[1], cfg.image_size, dev)
    up_w = bilinear_matrix(feat_shape[2], cfg.image_size, dev)
    loss_fn = segmentation_loss(num_classes, cfg.dice_loss)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = schedule_steps(n, cfg.batch_size, cfg.epochs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))

    t0 = time.perf_counter()
    with _FeatureCache(cfg, n, feat_shape) as cache:
        if cfg.caches_features:
            cache.fill(bb, images, progress)
            del images  # only the features are needed from here on
        encode_s = time.perf_counter() - t0

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            y = targets[idx].long().to(dev)
            if cache.features is not None:
                f = cache.batch(idx).to(dev)
            else:
                x = images[idx].to(dev)
                if cfg.augment:
                    x, y = augment_slices(x, y, gen)
                with torch.no_grad():
                    f = forward_features(bb, x).float()
            logits = up_h @ head(f) @ up_w.T  # (B, K, h, w) -> (B, K, S, S), bilinear
            return loss_fn(logits, y)

        t_train = time.perf_counter()
        history = fit(
            head,
            batch_loss,
            n,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            optimizer=opt,
            scheduler=sched,
            generator=gen,
            task="probe/train",
            description=f"probing {name}",
            progress=progress,
        )
        train_s = time.perf_counter() - t_train
        cache_bytes = cache.nbytes

    head.eval()
    t_pred = time.perf_counter()

    def predict_logits(x: torch.Tensor) -> torch.Tensor:
        return head(forward_features(bb, x).float())

    predictions = predict_volumes(
        predict_logits,
        val,
        labels,
        cfg.image_size,
        cfg.batch_size,
        dev,
        task="probe/predict",
        progress=progress,
    )
    info = {
        "encode_s": encode_s,
        "train_s": train_s,
        "predict_s": time.perf_counter() - t_pred,
        "cache_bytes": cache_bytes,
        "feature_shape": list(feat_shape),
        "train_slices": n,
        "train_cases": [v.case_id for v in train_used],
    }
    return score_predictions(
        name,
        "linear_probe",
        predictions,
        val,
        labels,
        history=history,
        config=asdict(cfg),
        info=info,
        save_predictions=save_predictions,
    )
