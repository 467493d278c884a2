"""Shared pieces of the issue-10 collapse investigation (datasets, reference MoCo, metrics).

Composes collapsekit's public API; nothing in the package is modified.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from collapsekit.data import SliceDataset, TwoViewTransform, load_split
from collapsekit.data.phantom import PhantomConfig
from collapsekit.models.builder import ModelConfig, build_encoder

CACHE = "/tmp/ck_cache"
# 52 cases, 8 held out: the 44 training cases are the same as the 48-case phantom's (case seed = index)
PHANTOM = PhantomConfig(cases=52, size=128, slices=48, validation=8)
WIN_LO, WIN_W = -175.0, 425.0


# ----------------------------------------------------------------------------- data
def phantom_volumes():
    tr = load_split("phantom", split="training", phantom=PHANTOM, cache_dir=CACHE)
    va = load_split("phantom", split="validation", phantom=PHANTOM, cache_dir=CACHE)
    return tr, va


def texturize(vol, seed: int, strength: float = 1.0):
    """Post-process one windowed phantom volume: per-organ parenchymal texture (two scales),
    enhancing vessels in liver/spleen/kidneys, mesenteric vessels in fat, band-pass (FBP-like)
    correlated noise. All amplitudes in HU, randomised per case."""
    rng = np.random.default_rng(10_000 + seed)
    hu = np.array(vol.image, dtype=np.float32) * WIN_W + WIN_LO
    lab = np.asarray(vol.label)
    shape = hu.shape
    inside = (hu > WIN_LO + 5) & (hu < WIN_LO + WIN_W - 5)  # not air, not clipped bone

    def field(sxy, sz):
        f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), (sxy, sxy, sz))
        return f / max(float(f.std()), 1e-6)

    coarse, fine = field(4.0, 1.5), field(1.0, 0.7)
    add = np.zeros(shape, np.float32)
    for lid in np.unique(lab):
        m = (lab == lid) & inside
        if lid == 0:
            a_c, a_f, off = rng.uniform(4, 8), rng.uniform(6, 12), 0.0
        else:
            a_c, a_f, off = rng.uniform(6, 15), rng.uniform(8, 20), rng.normal(0, 10)
        add[m] += a_c * coarse[m] + a_f * fine[m] + off
    g = field(2.5, 1.0)
    vess = (np.abs(g) < 0.10) & np.isin(lab, [1, 2, 3, 6])
    add[vess] += rng.uniform(60, 110)
    g2 = field(2.0, 1.0)
    fatv = (np.abs(g2) < 0.06) & (lab == 0) & inside & (hu < -40)
    add[fatv] += rng.uniform(100, 160)
    w = rng.standard_normal(shape).astype(np.float32)
    noise = ndimage.gaussian_filter(w, (0.6, 0.6, 0)) - 0.7 * ndimage.gaussian_filter(w, (1.5, 1.5, 0))
    noise *= rng.uniform(15, 30) / max(float(noise.std()), 1e-6)
    add += np.where(inside, noise, 0.0)
    out = np.clip((hu + strength * add - WIN_LO) / WIN_W, 0, 1).astype(np.float32)
    return dataclasses.replace(vol, image=np.asfortranarray(out))


def synthetic_images(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    """``n`` distinct 1-channel images: an oriented grating background + 3-5 textured shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, 1, size, size), np.float32)

    def grating():
        f, th, ph = rng.uniform(2, 14), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        return np.sin(2 * np.pi * f * (xx * np.cos(th) + yy * np.sin(th)) + ph)

    for i in range(n):
        img = rng.uniform(0.2, 0.8) + rng.uniform(0.05, 0.2) * grating()
        for _ in range(rng.integers(3, 6)):
            cx, cy = rng.uniform(0.1, 0.9, 2)
            ax, ay = rng.uniform(0.08, 0.3, 2)
            if rng.random() < 0.5:
                m = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
            else:
                m = (np.abs(xx - cx) < ax) & (np.abs(yy - cy) < ay)
            img = np.where(m, rng.uniform(0, 1) + rng.uniform(0.0, 0.2) * grating(), img)
        out[i, 0] = np.clip(img, 0, 1)
    return torch.from_numpy(out)


class TensorSlices:
    """Minimal stand-in for SliceDataset over a ``(N, 1, H, W)`` tensor."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def slice_image(self, i: int) -> torch.Tensor:
        return self.images[i]


def build_data(kind: str, tex_strength: float = 1.0):
    """(train slices, held-out slices) objects with ``slice_image(i)`` and ``len``."""
    if kind == "synthetic":
        imgs = synthetic_images(2300 + 384, 128, 0)
        return TensorSlices(imgs[:2300]), TensorSlices(imgs[2300:])
    tr, va = phantom_volumes()
    if kind == "texphantom":
        tr = [texturize(v, i, tex_strength) for i, v in enumerate(tr)]
        va = [texturize(v, 1000 + i, tex_strength) for i, v in enumerate(va)]
    elif kind != "phantom":
        raise ValueError(kind)
    return SliceDataset(tr), SliceDataset(va)


class Views(TwoViewTransform):
    """TwoViewTransform with an intensity-jitter strength knob (1 = collapsekit's default)."""

    def __init__(self, jitter_strength: float = 1.0, **kw) -> None:
        super().__init__(**kw)
        self.js = float(jitter_strength)

    def _intensity(self, v):
        if self.js == 1.0:
            return super()._intensity(v)
        s = self.js
        if torch.rand(()) < self.jitter_p:
            for op in torch.randperm(3).tolist():
                f = 1.0 + s * (-0.4 + 0.8 * float(torch.rand(())))
                if op == 0:
                    v = v * f
                elif op == 1:
                    v = (v - v.mean()) * f + v.mean()
                else:
                    v = v.clamp(0, 1) ** (1.0 + s * (-0.3 + 0.8 * float(torch.rand(()))))
            v = v.clamp(0, 1)
        if torch.rand(()) < self.blur_p:
            from collapsekit.data.augment import _gaussian_blur

            v = _gaussian_blur(v, 0.1 + 1.9 * s * float(torch.rand(())))
        if self.noise_std > 0 and torch.rand(()) < 0.5:
            v = (v + self.noise_std * torch.randn_like(v)).clamp(0, 1)
        return v


def make_batch(data, tf, step: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic batch ``step`` (epoch permutation + augmentation under a forked RNG), so
    that different models see exactly the same batches."""
    n = len(data)
    per_epoch = n // batch
    ep, b = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 7919 + ep)
    idx = torch.randperm(n, generator=g)[b * batch : (b + 1) * batch].tolist()
    with torch.random.fork_rng():
        torch.manual_seed(seed * 1_000_003 + step)
        items = [tf(data.slice_image(i)) for i in idx]
    out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    out["index"] = torch.tensor(idx)
    return out


def monitor_images(data, size: int, limit: int = 512) -> torch.Tensor:
    n = len(data)
    sel = np.linspace(0, n - 1, min(n, limit)).round().astype(int)
    imgs = torch.stack([data.slice_image(int(i)) for i in sel])
    return F.interpolate(imgs, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# ----------------------------------------------------------------------------- reference MoCo
class RefMoCo(nn.Module):
    """Plain MoCo v2 step after facebookresearch/moco builder.py (single process).

    encoder_q; encoder_k = deepcopy (no grad); momentum update of parameters before the key
    forward; optional shuffle-BN emulation by running the key forward in ``splits`` chunks of a
    random permutation (each chunk is its own BatchNorm batch); queue of K keys; logits
    [q.k+ | q.queue]/T; CE with label 0; enqueue after the loss.
    """

    def __init__(self, cfg: ModelConfig, splits: int = 1) -> None:
        super().__init__()
        self.cfg, self.splits = cfg, splits
        self.encoder_q = build_encoder(cfg)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(cfg.proj_dim, cfg.queue_size), dim=0))
        self.ptr = 0

    def forward(self, batch):
        m, T, K = self.cfg.momentum, self.cfg.temperature, self.cfg.queue_size
        q = F.normalize(self.encoder_q(batch["view1"]), dim=1)
        with torch.no_grad():
            for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
                pk.data.mul_(m).add_(pq.data, alpha=1 - m)
            x = batch["view2"]
            if self.splits > 1:
                perm = torch.randperm(x.shape[0])
                k = torch.cat([self.encoder_k(c) for c in x[perm].chunk(self.splits)])[torch.argsort(perm)]
            else:
                k = self.encoder_k(x)
            k = F.normalize(k, dim=1)
        self.last_q, self.last_k = q.detach(), k.detach()
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], 1) / T
        labels = torch.zeros(q.shape[0], dtype=torch.long)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            n = k.shape[0]
            idx = (self.ptr + torch.arange(n)) % K
            self.queue[:, idx] = k.t()
            self.ptr = (self.ptr + n) % K
        return loss, logits


# ----------------------------------------------------------------------------- metrics
def erank_lambda(x: torch.Tensor) -> float:
    x = x.double() - x.double().mean(0)
    lam = torch.linalg.eigvalsh(x.t() @ x / max(1, x.shape[0] - 1)).clamp_min(0)
    p = lam / lam.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def mean_pairwise_cos(z: torch.Tensor) -> float:
    z = F.normalize(z.double(), dim=1)
    n = z.shape[0]
    s = z @ z.t()
    return float((s.sum() - n) / (n * (n - 1)))


@torch.no_grad()
def eval_encoder(enc, images: torch.Tensor, chunk: int = 128, train_bn: bool = False) -> dict[str, float]:
    """Metrics on fixed images; eval-mode BN, or (``train_bn``) batch statistics on a copy."""
    if train_bn:
        enc = copy.deepcopy(enc)
        enc.train()
        chunk = 32
        was = True
    else:
        was = enc.training
        enc.eval()
    emb, proj, hid = [], [], []
    for c in images.split(chunk):
        f = enc.features(c)
        e = f.mean(dim=(2, 3))
        x = enc.pre_projector(e)
        h = F.relu(enc.projector.fc1(x))
        emb.append(e)
        hid.append(h)
        proj.append(enc.projector.fc2(h))
    if not train_bn:
        enc.train(was)
    emb, proj, hid = torch.cat(emb), torch.cat(proj), torch.cat(hid)
    return {
        "erank_backbone": erank_lambda(emb),
        "erank_proj": erank_lambda(proj),
        "cos_proj": mean_pairwise_cos(proj),
        "cos_backbone": mean_pairwise_cos(emb),
        "dead_relu": float((hid.max(0).values <= 0).double().mean()),
        "n_monitor": int(images.shape[0]),
    }


@torch.no_grad()
def recalibrate_bn(enc, images: torch.Tensor, chunk: int = 64) -> None:
    for mod in enc.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    enc.train()
    for c in images.split(chunk):
        enc.features(c)
    for mod in enc.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = 0.1
    enc.eval()


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def heldout_retrieval(enc, pair: dict, train_bn: bool = False) -> dict[str, float]:
    """Partner-view top-1 among all held-out pairs (projector and backbone), eval-mode BN or
    batch-statistics BN (on a copy, chunks of 32 like training)."""
    e = copy.deepcopy(enc) if train_bn else enc
    was = e.training
    e.train(train_bn)
    res = {}
    outs = []
    for v in (pair["view1"], pair["view2"]):
        fs = [e.features(c) for c in v.split(32)]
        f = torch.cat(fs)
        outs.append((f.mean(dim=(2, 3)), torch.cat([e.project(x) for x in fs])))
    if not train_bn:
        e.train(was)
    for name, i in (("backbone", 0), ("proj", 1)):
        a, b = F.normalize(outs[0][i].double(), dim=1), F.normalize(outs[1][i].double(), dim=1)
        s = a @ b.t()
        res[f"ho_top1_{name}"] = float((s.argmax(1) == torch.arange(s.shape[0])).double().mean())
        n = s.shape[0]
        res[f"ho_gap_{name}"] = float(s.diag().mean() - (s.sum() - s.diag().sum()) / (n * n - n))
    return res
