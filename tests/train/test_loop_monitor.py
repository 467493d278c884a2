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
from collapsekit.train.config import config_from_dict, load_config
from collapsekit.train.loop import train
from collapsekit.train.monitor import monitor_images
from collapsekit.train.split import load_training_volumes


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
        final_samples=0,
        num_workers=0,
        steps=3,
        model={"queue_size": 16, "method": "zca", "zca_placement": "pre_projector"},
    )
    res = train(cfg, tmp_path / "run")
    last = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()][-1]

    moco = MoCo(load_config(res.run_dir / "config.toml").model)  # the queue fitted to the data
    moco.load_state_dict(load_checkpoint(res.run_dir / "checkpoint.pt")["model"])
    if cfg.channels_last:  # as the loop ran it: the memory format changes float32 summation order
        moco.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    enc = moco.encoder_q.eval()
    _, held_out = load_training_volumes(cfg, None)
    with torch.no_grad():
        fmap = enc.features(monitor_images(held_out, cfg.monitor_samples, cfg.image_size))
        h, z = fmap.mean(dim=(2, 3)), enc.project(fmap)
    b, p = spectrum_report(h), spectrum_report(z)
    expected = {
        "backbone/effective_rank_sigma": b.effective_rank_sigma,
        "backbone/rankme": b.rankme,
        "backbone/effective_rank_lambda": b.effective_rank_lambda,
        "backbone/std_l2": b.std_l2,
        "backbone/mean_cosine": pairwise_cosine_stats(h).mean_cosine,
        "backbone/rank_bound": b.rank_bound,
        "projector/effective_rank_sigma": p.effective_rank_sigma,
        "projector/effective_rank_lambda": p.effective_rank_lambda,
        "projector/std_l2": p.std_l2,
        "projector/mean_cosine": pairwise_cosine_stats(z).mean_cosine,
    }
    assert {k: last[k] for k in expected} == pytest.approx(expected, rel=1e-6)
