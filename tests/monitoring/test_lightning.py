"""The Lightning callback in a real ``lightning.Trainer`` on CPU, logging to a real CSV logger."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.monitoring import CollapseMonitor

L = pytest.importorskip("lightning")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from collapsekit.monitoring.lightning import CollapseMonitorCallback  # noqa: E402


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        (x,) = batch
        z = nn.functional.normalize(self(x), dim=1)
        return (z @ z.T).mean()  # pushes the rows together: the spectrum moves every step

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Reference(L.Callback):
    """After the monitor, the diagnostics functions on the same held-out batch, same weights."""

    def __init__(self, held_out: torch.Tensor, every: int) -> None:
        self.held_out, self.every = held_out, every
        self.expected: dict[int, dict[str, float]] = {}
        self.modes: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.modes.append(pl_module.training and pl_module.backbone.training)
        step = trainer.global_step
        if step % self.every:
            return
        pl_module.eval()
        with torch.no_grad():
            h = pl_module.backbone(self.held_out)
            z = pl_module.head(h)
        pl_module.train()
        row = {}
        for space, e in (("backbone", h), ("projector", z)):
            s = spectrum_report(e, normalize=True)
            row[f"collapse/{space}/effective_rank_sigma"] = s.effective_rank_sigma
            row[f"collapse/{space}/effective_rank_lambda"] = s.effective_rank_lambda
            row[f"collapse/{space}/rankme"] = s.rankme
            row[f"collapse/{space}/alpha"] = s.alpha
            row[f"collapse/{space}/std_l2"] = s.std_l2
            row[f"collapse/{space}/mean_cosine"] = pairwise_cosine_stats(e).mean_cosine
        self.expected[step] = row


@pytest.mark.slow  # ~5 s: a real Trainer
def test_callback_logs_the_diagnostics_of_the_held_out_batch(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(64, 12, generator=g)), batch_size=8)
    held_out = torch.randn(48, 12, generator=g)
    model = Tiny()
    monitor = CollapseMonitor(
        model, held_out, layers={"backbone": "backbone", "projector": "head"}, every=2
    )
    reference = Reference(held_out, every=2)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        logger=logger,
        callbacks=[CollapseMonitorCallback(monitor), reference],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=50,  # the monitor's values must not depend on it
    )
    trainer.fit(model, train)

    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("collapse/backbone/rankme")]
    logged = {
        int(r["step"]): {k: float(v) for k, v in r.items() if k.startswith("collapse/")}
        for r in rows
    }
    assert sorted(logged) == sorted(reference.expected) == [2, 4, 6]
    for step, expected in reference.expected.items():
        assert logged[step] == pytest.approx(expected, rel=1e-12), step
    # the weights moved, so the steps differ: the comparison is per step, not of one constant
    assert (
        logged[2]["collapse/projector/mean_cosine"] != logged[6]["collapse/projector/mean_cosine"]
    )
    # the model trained in train mode throughout; the monitor restored it each time
    assert all(reference.modes) and model.training
    # and the last values are in callback_metrics (for EarlyStopping / ModelCheckpoint)
    last = trainer.callback_metrics["collapse/backbone/effective_rank_lambda"]
    assert float(last) == pytest.approx(
        reference.expected[6]["collapse/backbone/effective_rank_lambda"], rel=1e-6
    )


@pytest.mark.slow  # a real Trainer with a TensorBoard logger
def test_spectrum_image_goes_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(32, 12, generator=g)), batch_size=8)
    held_out = torch.randn(24, 12, generator=g)
    model = Tiny()
    monitor = CollapseMonitor(
        model, held_out, layers={"backbone": "backbone", "projector": "head"}, every=2, warn=False
    )
    tb = TensorBoardLogger(tmp_path, name="tb")
    csv_logger = CSVLogger(tmp_path, name="csv")  # no add_figure: gets no image, no error
    callback = CollapseMonitorCallback(monitor, log_spectrum_image=True)
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=[tb, csv_logger],
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train)
    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["collapse/spectrum"]
    images = events.Images("collapse/spectrum")
    assert [im.step for im in images] == [2, 4]
    assert images[0].encoded_image_string[:4] == b"\x89PNG" and images[0].width > 300
    assert "collapse/projector/effective_rank_lambda" in events.Tags()["scalars"]
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # the figures were closed


@pytest.mark.slow  # the README's plain loop, then its Lightning half in a real Trainer
def test_the_readme_lightning_example_raises_a_collapse_warning(tmp_path: Path) -> None:
    from collapsekit.data import PhantomConfig, load_split, select_slices, slice_tensor
    from collapsekit.monitoring import CollapseWarning

    torch.manual_seed(0)
    vols = load_split("phantom", split="all", phantom=PhantomConfig(cases=6, size=64, validation=0))
    images = slice_tensor(vols, select_slices(vols, 256), 64)
    train_x, held_out = images[:192], images[192:]
    model = nn.Sequential()  # the README's toy backbone + projector
    model.backbone = nn.Sequential(nn.Conv2d(1, 64, 5, 4, 2), nn.BatchNorm2d(64), nn.ReLU())
    model.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model.projector = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))

    def info_nce(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        z1 = nn.functional.normalize(model(x + 0.1 * torch.randn_like(x)), dim=1)
        z2 = nn.functional.normalize(model(x.flip(-1)), dim=1)
        return nn.functional.cross_entropy(z1 @ z2.T / 0.2, torch.arange(len(x)))

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(50):  # the plain-PyTorch half, which the Lightning half continues
        opt.zero_grad()
        info_nce(model, train_x[torch.randint(len(train_x), (32,))]).backward()
        opt.step()

    class SSL(L.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, x, batch_idx):  # type: ignore[no-untyped-def]
            return info_nce(self, x)

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    ssl = SSL(model)
    spaces = {"backbone": "net.backbone", "projector": "net.projector"}
    callback = CollapseMonitorCallback(CollapseMonitor(ssl, held_out, layers=spaces, every=10))
    trainer = L.Trainer(
        max_steps=50,
        callbacks=[callback],
        logger=CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with pytest.warns(CollapseWarning, match="projector"):
        trainer.fit(ssl, DataLoader(train_x, batch_size=32, shuffle=True))
    last = callback.monitor.history[-1]
    assert last.health is not None and last.health.health.value == "collapsed"
