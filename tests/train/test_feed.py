"""The two feeds of pretraining batches, the device_augment and compile switches (issue 21)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from collapsekit.data import TwoViewTransform, Volume
from collapsekit.errors import ConfigError
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.train import feed as feed_module
from collapsekit.train.config import config_from_dict
from collapsekit.train.feed import (
    DeviceFeed,
    HostFeed,
    compile_model,
    pretrain_feed,
    use_device_augment,
)
from collapsekit.train.loop import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
TINY: dict[str, Any] = dict(
    image_size=64,
    batch_size=8,
    phantom_cases=4,
    phantom_size=64,
    phantom_slices=8,
    monitor_samples=12,
    final_samples=0,  # no 48-case evaluation phantom for a final spectrum
    num_workers=0,
    steps=3,
)
MODEL = {"method": "local+zca", "queue_size": 16, "local_queue_size": 64}


def test_auto_is_on_for_cuda_and_the_measured_choice_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert use_device_augment("auto", CUDA) is True
    for measured in (True, False):
        monkeypatch.setattr(feed_module, "CPU_AUTO", measured)
        assert use_device_augment("auto", CPU) is measured
    assert use_device_augment("on", CPU) and not use_device_augment("off", CUDA)
    with pytest.raises(ConfigError, match="did you mean 'auto'"):
        use_device_augment("atuo", CPU)


def test_config_switches_default_and_validate() -> None:
    cfg = config_from_dict({})
    assert (cfg.device_augment, cfg.compile) == ("auto", "off")
    cfg = config_from_dict({"device_augment": "on", "compile": "cudagraphs"})
    assert (cfg.device_augment, cfg.compile) == ("on", "cudagraphs")
    with pytest.raises(ConfigError, match="did you mean 'off'"):
        config_from_dict({"compile": "of"})
    with pytest.raises(ConfigError, match="device_augment"):
        config_from_dict({"device_augment": "yes"})


def test_compile_off_is_the_model_itself() -> None:
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, "off") is model
    with pytest.raises(ConfigError, match="compile"):
        compile_model(model, "fast")


def _volumes() -> list[Volume]:
    rng = np.random.default_rng(0)
    return [
        Volume(
            f"c{i}",
            np.asfortranarray(rng.random((40, 36, 6), np.float32)),
            None,
            np.eye(4),
            np.arange(6),
        )
        for i in range(2)
    ]


def test_the_two_feeds_give_batches_of_one_format() -> None:
    t = TwoViewTransform(size=16)
    host = pretrain_feed(_volumes(), t, 0, CPU, "off")
    dev = pretrain_feed(_volumes(), t, 0, CPU, "on")
    assert isinstance(host, HostFeed) and isinstance(dev, DeviceFeed)
    idx = [3, 7, 1, 10]
    a = host.prepare(host.collate([host.dataset[i] for i in idx]))
    raw = dev.dataset.__getitems__(idx)
    b = dev.prepare(raw)
    assert (
        set(a) == set(b) == {"view1", "view2", "box1", "box2", "flip1", "flip2", "volume", "slice"}
    )
    for key in ("view1", "box2", "flip1"):
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype
    assert torch.equal(a["slice"], b["slice"]) and torch.equal(a["volume"], b["volume"])
    # the device feed's views depend only on the batch's seed: the same batch, the same views
    again = dev.prepare(dev.dataset.__getitems__(idx))
    assert torch.equal(again["view1"], b["view1"]) and torch.equal(again["box2"], b["box2"])
    dev.dataset.epoch = 1
    assert not torch.equal(dev.prepare(dev.dataset.__getitems__(idx))["box1"], b["box1"])


@pytest.mark.slow  # ~20 s: three short trainings
def test_device_augmented_training_runs_and_resumes_exactly(tmp_path: Path) -> None:
    cfg = config_from_dict({}, **TINY, device_augment="on", model=MODEL)
    full = train(cfg, tmp_path / "full")
    assert full.finished and len(full.losses) == 3 and all(np.isfinite(full.losses))
    host = train(config_from_dict({}, **TINY, device_augment="off", model=MODEL), tmp_path / "host")
    assert host.losses != full.losses  # other augmentation draws: a different run
    cut = config_from_dict({}, **TINY, device_augment="on", stop_after=2, model=MODEL)
    train(cut, tmp_path / "cut")
    resumed = train(cfg, tmp_path / "cut", resume=True)
    assert resumed.finished and resumed.losses == full.losses
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["config"]["device_augment"] == "on"


# On this project's 2-core CPU machines inductor's C++ build of the MoCo step ran 15 min and then
# failed in g++: the compiled path is tested on CUDA only (benchmarks/gpu_run5.sh measures it).
@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["on", "cudagraphs"])
def test_compiled_step_trains_like_the_eager_one(tmp_path: Path, mode: str) -> None:
    runs = {}
    for m in ("off", mode):
        cfg = config_from_dict(
            {}, **{**TINY, "steps": 2}, device="cuda", amp=False, compile=m, model=MODEL
        )
        runs[m] = train(cfg, tmp_path / m).losses
    np.testing.assert_allclose(runs[mode], runs["off"], rtol=1e-3)


def test_cli_flags_reach_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import collapsekit.train.loop as loop
    from collapsekit.cli.app import app

    seen: list[object] = []

    def fake_train(cfg: object, *args: object, **kw: object) -> None:
        seen.append(cfg)
        raise ConfigError("stop here")

    monkeypatch.setattr(loop, "train", fake_train)
    args = ["train", "--device-augment", "on", "--compile", "cudagraphs", "--quiet"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "stop here" in res.output
    assert [(c.device_augment, c.compile) for c in seen] == [("on", "cudagraphs")]  # type: ignore[attr-defined]
    res = CliRunner().invoke(app, ["train", "--compile", "fast", "--quiet"])
    assert res.exit_code == 2 and "compile" in res.output
