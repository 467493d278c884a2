"""The speed switches of TrainConfig (issue 13) are applied by train() and change no numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.train.config import config_from_dict
from collapsekit.train.loop import train

# 64 px and 4 samples per shuffle-BN sub-batch: at 32 px and 2 samples, layer4's BatchNorms see
# two values per channel and amplify float rounding ~10^4-fold per step (measured in float64 too),
# so no two implementations agree after three steps there.
TINY = dict(
    # the schedule these tests were written for (MoCo's linear rule, no warm-up; the defaults
    # before issue 19): lr 0.03 amplifies float rounding between code paths past the tolerances
    lr=0.03 * 8 / 256,
    warmup_steps=0,
    image_size=64,
    batch_size=8,
    phantom_cases=4,
    phantom_size=64,
    phantom_slices=8,
    monitor_samples=12,
    final_samples=0,
    num_workers=0,
    steps=3,
)
SWITCHES = ("channels_last", "fused_sgd", "fused_local_loss")


def test_switches_default_on_and_read_from_a_config() -> None:
    cfg = config_from_dict({})
    assert all(getattr(cfg, name) is True for name in SWITCHES)
    off = config_from_dict(dict.fromkeys(SWITCHES, False))
    assert not any(getattr(off, name) for name in SWITCHES)


@pytest.mark.slow  # ~15 s: two short trainings
def test_switches_on_and_off_train_the_same_losses(tmp_path: Path) -> None:
    model = {"method": "local+zca", "queue_size": 16, "local_queue_size": 64}
    runs = {}
    for on in (True, False):
        cfg = config_from_dict({}, **TINY, **dict.fromkeys(SWITCHES, on), model=model)
        res = train(cfg, tmp_path / str(on))
        assert res.finished
        runs[on] = load_checkpoint(tmp_path / str(on) / "checkpoint.pt")
    fast, plain = runs[True], runs[False]
    # applied: fused SGD state, channels_last weights in the saved state
    assert fast["optimizer"]["param_groups"][0]["fused"] is True
    assert not plain["optimizer"]["param_groups"][0]["fused"]
    w = "encoder_q.backbone.layer1.0.conv2.weight"
    assert fast["model"][w].is_contiguous(memory_format=torch.channels_last)
    assert plain["model"][w].is_contiguous()
    # and numerically the same run: float32 rounding, amplified to ~2e-4 in three steps (the exact
    # comparison is tests/models/test_fast_paths.py, in float64)
    assert len(fast["losses"]) == len(plain["losses"]) == 3
    torch.testing.assert_close(
        torch.tensor(fast["losses"]), torch.tensor(plain["losses"]), rtol=1e-3, atol=0
    )
    params = [k for k, v in plain["model"].items() if v.is_floating_point() and "running" not in k]
    for key in params:  # weights move ~1e-3 in three steps; they agree to 5e-4 (conv1 worst)
        torch.testing.assert_close(fast["model"][key], plain["model"][key], rtol=0, atol=2e-3)
