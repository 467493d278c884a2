"""Inputs of the issue-19 before/after figures (version-neutral: arrays and JSON records).

Run from the repository root: ``python docs/archive/figures_issue19/make_inputs.py`` writes
``/tmp/mon/fig/{random_resnet18.npy, collapsed.npy, history.json}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from collapsekit.data import PhantomConfig, load_split, select_slices, slice_tensor
from collapsekit.models import recalibrate_batch_norm
from collapsekit.models.builder import ModelConfig, build_encoder

OUT = Path("/tmp/mon/fig")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vols = load_split(
        "phantom", split="all", phantom=PhantomConfig(cases=12, size=64, validation=0)
    )
    images = slice_tensor(vols, select_slices(vols, 448), 64)
    enc = build_encoder(ModelConfig(arch="resnet18"))
    recalibrate_batch_norm(enc.backbone, images[:256])
    enc.eval()
    with torch.no_grad():
        z = enc.features(images[256:]).mean(dim=(2, 3))  # 192 x 512: N - 1 < D
    np.save(OUT / "random_resnet18.npy", z.numpy())
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((6, 512))  # a collapsed set: 6 directions + small noise
    scales = np.array([5, 2, 1, 0.5, 0.2, 0.1])
    coll = (rng.standard_normal((192, 6)) * scales) @ basis
    coll += 1e-3 * rng.standard_normal((192, 512)) + 3
    np.save(OUT / "collapsed.npy", coll.astype(np.float32))
    history = {
        name: [
            {
                "epoch": 1,
                "step": s,
                "effective_rank": 40 * a - 3 * s,
                "effective_rank_eigenvalues": 12 * a - s,
                "proj_effective_rank_eigenvalues": 8 * a - 0.5 * s,
            }
            for s in (1, 2, 3, 4, 5)
        ]
        for name, a in (("mocov2", 1.0), ("zca", 1.3))
    }
    (OUT / "history.json").write_text(json.dumps(history))


if __name__ == "__main__":
    main()
