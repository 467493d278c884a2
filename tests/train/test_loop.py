from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from collapsekit.data import SliceDataset
from collapsekit.errors import ConfigError, TrainingError
from collapsekit.runs.checkpoint import load_checkpoint
from collapsekit.train.config import TrainConfig, config_from_dict, load_config
from collapsekit.train.loop import train
from collapsekit.train.split import load_training_volumes

TINY = dict(
    # the schedule these tests were written for (MoCo's linear rule, no warm-up; the defaults
    # before issue 19): lr 0.03 amplifies float rounding between code paths past the tolerances
    lr=0.03 * 4 / 256,
    warmup_steps=0,
    image_size=32,
    batch_size=4,
    phantom_cases=4,
    phantom_size=32,
    phantom_slices=6,
    monitor_samples=12,
    num_workers=0,
    final_samples=0,  # the final spectrum on the monitor slices: no evaluation phantom to build
)


def tiny(**kw) -> TrainConfig:
    model = kw.pop("model", {})
    return config_from_dict(
        {}, **{**TINY, **kw}, model={"queue_size": 16, "local_queue_size": 64, **model}
    )


def test_run_directory_contents(tmp_path: Path) -> None:
    res = train(tiny(epochs=2, model={"method": "local+zca"}), tmp_path / "run")
    run = tmp_path / "run"
    n = len(SliceDataset(load_training_volumes(tiny(), None)[0]))  # the training slices
    spe = n // 4  # drop_last batches of 4
    assert res.total_steps == 2 * spe
    assert res.finished and res.step == res.total_steps and spe >= 1
    assert {p.name for p in run.iterdir()} >= {
        "checkpoint.pt",
        "config.toml",
        "metrics.jsonl",
        "spectrum.png",
        "summary.json",
    }
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # a run of < 10 * log_every steps logs every total // 10 steps (here every step); the
    # monitor's spaces are in the rows at each epoch's end
    assert [(r["step"], r["steps"]) for r in rows] == [(s, 1) for s in range(1, 2 * spe + 1)]
    lines = [r for r in rows if "backbone/effective_rank_lambda" in r]
    assert [(r["epoch"], r["step"]) for r in lines] == [(1, spe), (2, 2 * spe)]
    for r in lines:
        assert set(r) >= {
            "loss",
            "loss_global",
            "loss_local",
            "lr",
            "top1_queue",
            "top1_in_batch",
            "images_per_s",
            "health",
            "backbone/effective_rank_sigma",
            "backbone/effective_rank_lambda",
            "backbone/alpha",
            "projector/mean_cosine",
        }
        assert math.isfinite(r["loss"])
        assert 1.0 <= r["backbone/effective_rank_sigma"] <= 5  # N-1 = 5 bounds the rank
        assert r["loss"] == pytest.approx(r["loss_global"] + 0.5 * r["loss_local"], rel=1e-5)
        assert r["health"] in ("healthy", "not learning", "collapsed")
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["step"] == res.step and len(ck["losses"]) == res.step
    # config.toml round-trips to the same config, with the queue fitted to the data (K <= N/4)
    given = tiny(epochs=2, model={"method": "local+zca"})
    fitted = replace(given, model=replace(given.model, queue_size=n // 4))
    assert n // 4 < 16 and load_config(run / "config.toml") == fitted
    # the cosine schedule ends at zero
    assert lines[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["health"]["health"] == lines[-1]["health"]
    assert summary["last"] == lines[-1]
    assert summary["final"]["where"] == "6 held-out monitor slices, rows L2-normalised"


def test_rows_every_log_every_steps_and_the_monitor_on_its_own_interval(tmp_path: Path) -> None:
    res = train(tiny(steps=20, log_every=4, monitor_every=6), tmp_path / "run")
    rows = [json.loads(x) for x in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    # 20 < 10 * 4 steps: a row every 20 // 10 = 2 steps, and at each monitor step (6, 12, 18, 20)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    monitored = [r["step"] for r in rows if "backbone/effective_rank_lambda" in r]
    assert monitored == [6, 12, 18, 20]
    assert all(r["steps"] == 2 for r in rows)
    # each row's loss and top-1 are the means of its window's steps
    losses = res.losses
    for r in rows:
        window = losses[r["step"] - 2 : r["step"]]
        assert r["loss"] == pytest.approx(sum(window) / 2, rel=1e-6)
    assert [r.to_dict() for r in res.history] == rows


def test_log_interval_gives_short_runs_ten_points() -> None:
    from collapsekit.train.callbacks import log_interval

    assert log_interval(10, 1200) == 10
    assert log_interval(10, 20) == 2
    assert log_interval(10, 5) == 1
    assert log_interval(3, 20) == 2  # never longer than log_every


def test_tiny_data_gets_a_queue_of_a_quarter_of_its_slices(tmp_path: Path) -> None:
    from collapsekit.progress import Message

    messages: list[str] = []

    def progress(event: object) -> None:
        if isinstance(event, Message):
            messages.append(event.text)

    res = train(tiny(steps=1, model={"queue_size": 1024}), tmp_path / "run", progress=progress)
    k = load_config(res.run_dir / "config.toml").model.queue_size
    n = len(SliceDataset(load_training_volumes(tiny(), None)[0]))
    assert k == n // 4
    assert any(f"queue size K = 1024 exceeds a quarter of the {n}" in m for m in messages)
    assert res.history[-1].loss_chance == pytest.approx(math.log(k + 1))
    # fit_queue = false keeps it (and warns)
    # (not prefilled: filling 1024 keys would take 256 batches of 4)
    kept = train(
        tiny(steps=1, fit_queue=False, prefill_queue=False, model={"queue_size": 1024}),
        tmp_path / "kept",
    )
    assert kept.history[-1].loss_chance == pytest.approx(math.log(1025))


@pytest.mark.slow  # ~7 s: three short trainings
def test_resume_replays_the_same_losses(tmp_path: Path) -> None:
    cfg = tiny(steps=6, model={"method": "local+zca"})
    full = train(cfg, tmp_path / "a")
    part = train(
        config_from_dict(
            {},
            **{**TINY, "steps": 6, "stop_after": 3},
            model={"queue_size": 16, "local_queue_size": 64, "method": "local+zca"},
        ),
        tmp_path / "b",
    )
    assert part.step == 3 and not part.finished
    assert not (tmp_path / "b" / "spectrum.png").exists()
    resumed = train(tiny(steps=6), tmp_path / "b", resume=True)
    assert resumed.finished and len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5, abs=1e-6)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k


def test_refuses_to_clobber_a_run(tmp_path: Path) -> None:
    train(tiny(steps=1, model={"method": "mocov2"}), tmp_path / "r")
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny(steps=1), tmp_path / "r")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(tiny(steps=1), tmp_path / "empty", resume=True)


def test_batch_larger_than_data(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="larger than the"):
        train(tiny(batch_size=512, steps=1), tmp_path / "r")


def test_nan_loss_stops_and_keeps_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collapsekit.models import MoCo

    cfg = tiny(steps=4, checkpoint_every=1, model={"method": "mocov2"})
    original = MoCo.forward
    calls = {"n": 0}

    def flaky(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(MoCo, "forward", flaky)
    with pytest.raises(TrainingError, match="at step 3"):
        train(cfg, tmp_path / "r")
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck["step"] == 2 and all(math.isfinite(x) for x in ck["losses"])


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="did you mean 'local\\+zca'"):
        tiny(model={"method": "local+zcaa"})
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        tiny(model={"arch": "resnet05"})
    with pytest.raises(ConfigError, match="data-dir"):
        config_from_dict({}, dataset="btcv")
    with pytest.raises(ConfigError, match="unknown config key 'epoch'; did you mean 'epochs'"):
        config_from_dict({"epoch": 3})


def test_latest_symlink_tracks_newest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    train(tiny(steps=1, model={"method": "mocov2"}), Path("runs") / "a")
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "runs" / "a").resolve()
    # resuming through the link keeps it pointing at the run, not at itself
    train(tiny(steps=1), Path("runs") / "latest", resume=True)
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "runs" / "a").resolve()
    train(tiny(steps=1, model={"method": "mocov2"}), Path("runs") / "b")
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "runs" / "b").resolve()
    # a run outside runs/ leaves the link alone
    train(tiny(steps=1, model={"method": "mocov2"}), tmp_path / "elsewhere")
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "runs" / "b").resolve()


def test_warmup_then_cosine_schedule_closed_form() -> None:
    from collapsekit.train.loop import cosine_schedule

    assert [cosine_schedule(s, 10, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert cosine_schedule(4, 10, 4) == 1.0  # the cosine starts at the end of the warm-up
    assert cosine_schedule(7, 10, 4) == pytest.approx(0.5)  # halfway through the cosine
    assert cosine_schedule(10, 10, 4) == pytest.approx(0.0, abs=1e-12)
    assert cosine_schedule(5, 10) == pytest.approx(0.5)  # no warm-up: the plain cosine


def test_monitor_records_both_spaces_every_n_steps(tmp_path: Path) -> None:
    cfg = tiny(steps=4, monitor_every=2, warmup_steps=2, fit_queue=False)
    res = train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.to_dict() for r in res.history] == rows
    lines = [r for r in rows if "backbone/effective_rank_lambda" in r]
    assert [r["step"] for r in lines] == [2, 4]
    for r in lines:
        assert r["loss_chance"] == pytest.approx(math.log(16 + 1))
        assert 0.0 <= r["top1_queue"] <= 1.0 and r["top1_in_batch_chance"] == 0.25
        bound = r["backbone/rank_bound"]  # N - 1 of the held-out slices (one 6-slice case here)
        assert bound == 5
        # effective rank (λ) ≤ effective rank (σ) (squaring sharpens the spectrum); projector
        # space of 128 dims
        lam, sigma = r["backbone/effective_rank_lambda"], r["backbone/effective_rank_sigma"]
        assert 1.0 <= lam <= sigma <= bound
        assert 1.0 <= r["projector/effective_rank_lambda"] <= bound
        assert -1.0 <= r["projector/mean_cosine"] <= 1.0
    # the final spectrum has both spaces
    assert (tmp_path / "run" / "spectrum_projector.json").is_file()


def test_demo_budget_keeps_the_queue_below_a_quarter_of_the_slices() -> None:
    from collapsekit.data import PhantomConfig, SliceDataset, load_split
    from collapsekit.train.config import budget_overrides

    cfg = config_from_dict({}, "demo")
    aug = cfg.augmentation()
    assert (cfg.image_size, aug["scale"], aug["jitter_p"], aug["blur_p"]) == (64, (0.8, 1.0), 0, 0)
    assert cfg.model.queue_size == 256 and cfg.model.momentum == 0.99
    assert cfg.monitor_samples >= 2 * cfg.model.backbone_width
    # flags win over the budget
    assert config_from_dict({}, "demo", steps=10).steps == 10
    # a fresh copy each time: changing one leaves the next untouched
    first = budget_overrides("demo")
    first["model"]["queue_size"] = 1
    first["steps"] = 1
    assert budget_overrides("demo")["model"]["queue_size"] == 256
    assert budget_overrides("demo")["steps"] == 1200
    phantom = PhantomConfig(
        cases=cfg.phantom_cases, size=32, slices=cfg.phantom_slices, validation=22
    )
    vols = load_split("phantom", split="validation", phantom=phantom)
    # 22 held-out cases give at least 1,024 monitor slices only if few are skipped; the training
    # split (48 cases) then holds >= 4 K slices
    assert len(vols) == 22 and len(SliceDataset(vols)) * 48 // 22 >= 4 * cfg.model.queue_size
