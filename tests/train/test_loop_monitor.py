"""The training loop's monitor records are the diagnostics functions' values of the trained
encoder on the held-out monitor slices (one code path: a CollapseMonitor of the encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.models import MoCo
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.train.config import config_from_dict
from collapsekit.train.loop import train
from collapsekit.train.split import load_volumes
from collapsekit.train.monitor import monitor_images


@pytest.mark.slow  # ~4 s: a short training
def test_last_record_equals_the_diagnostics_of_the_final_encoder(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {},
        image_size=32,
        batch_size=4,
        phantom_cases=4,
        phantom_size=32,
        phantom_slices=6,
        monitor_samples=12,
        num_workers=0,
        steps=3,
        model={"queue_size": 16, "method": "zca", "zca_placement": "pre_projector"},
    )
    res = train(cfg, tmp_path / "run")
    last = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()][-1]

    moco = MoCo(cfg.model)
    moco.load_state_dict(load_checkpoint(res.run_dir / "checkpoint.pt")["model"])
    if cfg.channels_last:  # as the loop ran it: the memory format changes float32 summation order
        moco.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    enc = moco.encoder_q.eval()
    _, held_out = load_volumes(cfg, None)
    with torch.no_grad():
        fmap = enc.features(monitor_images(held_out, cfg.monitor_samples, cfg.image_size))
        h, z = fmap.mean(dim=(2, 3)), enc.project(fmap)
    b, p = spectrum_report(h), spectrum_report(z)
    expected = {
        "effective_rank": b.effective_rank_centered,
        "effective_rank_uncentered": b.effective_rank_uncentered,
        "effective_rank_eigenvalues": b.effective_rank_eigenvalues,
        "std_l2": b.std_l2,
        "mean_cosine": pairwise_cosine_stats(h).mean,
        "rank_bound": b.rank_bound,
        "proj_effective_rank": p.effective_rank_centered,
        "proj_effective_rank_eigenvalues": p.effective_rank_eigenvalues,
        "proj_std_l2": p.std_l2,
        "proj_mean_cosine": pairwise_cosine_stats(z).mean,
    }
    assert {k: last[k] for k in expected} == pytest.approx(expected, rel=1e-6)
