"""CUDA path: autocast training with ZCA math in float32. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from collapsekit.models import ZCAWhitening
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.train.config import config_from_dict
from collapsekit.train.loop import train


@pytest.mark.gpu
def test_zca_under_autocast_whitens_in_float32() -> None:
    x = torch.randn(512, 64, device="cuda") @ torch.randn(64, 64, device="cuda")
    zca = ZCAWhitening(64, group_size=32, affine=False).cuda().train()
    with torch.autocast("cuda", dtype=torch.float16):
        y = zca(x)
    y = y.float()
    cov = torch.cov(y[:, :32].T)
    assert torch.allclose(cov, torch.eye(32, device="cuda"), atol=5e-2)
    assert zca.running_cov.dtype == torch.float32


@pytest.mark.gpu
def test_train_two_steps_on_cuda_with_amp(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {},
        steps=2,
        batch_size=8,
        image_size=64,
        phantom_cases=4,
        phantom_size=64,
        phantom_slices=8,
        monitor_samples=16,
        final_samples=0,
        num_workers=0,
        device="cuda",
        model={"queue_size": 32, "local_queue_size": 128},
    )
    res = train(cfg, tmp_path / "run")
    assert res.finished and all(torch.isfinite(torch.tensor(res.losses)))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    # a checkpoint written on the GPU is diagnosed on the CPU
    from collapsekit.runs import load_model

    model = load_model(tmp_path / "run", device="cpu")
    z = model.backbone(torch.rand(2, 1, 64, 64))
    assert z.shape == (2, 512) and torch.isfinite(z).all()
