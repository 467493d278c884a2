"""The monitor on other people's models: token outputs, 3-D convs, wrapped models, default warnings."""

from __future__ import annotations

import os
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.diagnostics.health import Health
from collapsekit.monitoring import CollapseMonitor, CollapseWarning


class TinyViT(nn.Module):
    """Patch embedding + one transformer block: ``blocks`` outputs ``(B, 16, 64)`` tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 64, 4, 4)  # 16x16 image -> 4x4 = 16 tokens of 64
        self.blocks = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.norm(self.blocks(tokens))


def test_token_outputs_measure_the_feature_space() -> None:
    torch.manual_seed(0)
    vit, x = TinyViT(), torch.randn(48, 1, 16, 16)
    res = CollapseMonitor(vit, x, layers={"tokens": "blocks", "out": "norm"}, warn=False).measure()
    for space in ("tokens", "out"):
        assert res[space].spectrum.d == 64 and res[space].spectrum.n == 48
        assert res[space].pooling == "mean over tokens of (B, 16, 64)"
    with torch.no_grad():
        vit.eval()
        ref = vit(x).mean(dim=1)
    direct = CollapseMonitor(nn.Identity(), ref, warn=False).measure()
    assert res["out"].scalars() == pytest.approx(direct["embeddings"].scalars(), rel=1e-6)
    cls = CollapseMonitor(vit, x, layers={"out": "norm"}, pool="cls", warn=False).measure()
    assert cls["out"].pooling == "cls token (index 0) of (B, 16, 64)"
    assert cls.to_dict()["spaces"]["out"]["pooling"] == "cls token (index 0) of (B, 16, 64)"


def test_3d_conv_and_2d_rows() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(20, 1, 4, 5, 5)
    res = CollapseMonitor(net, x, layers={"conv": "1", "head": "3"}, warn=False).measure()
    assert (
        res["conv"].spectrum.d == 6 and res["conv"].pooling == "mean over space of (B, 6, 4, 5, 5)"
    )
    assert res["head"].spectrum.d == 5 and res["head"].pooling == "as is (B, 5)"
    with torch.no_grad():
        conv = net[1](net[0](x)).mean(dim=(2, 3, 4))
    ref = CollapseMonitor(nn.Identity(), conv, warn=False).measure()["embeddings"]
    assert res["conv"].scalars() == pytest.approx(ref.scalars(), rel=1e-6)


def test_compiled_model_is_unwrapped_and_its_layer_names_resolve() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    compiled = torch.compile(net)  # not run: the monitor measures the plain module
    x = torch.randn(30, 8)
    mon = CollapseMonitor(compiled, x, layers={"hidden": "_orig_mod.1", "out": "2"}, warn=False)
    assert mon.embed is net and mon.module is net and mon.layers == {"hidden": "1", "out": "2"}
    plain = CollapseMonitor(net, x, layers={"hidden": "1", "out": "2"}, warn=False).measure()
    assert mon.measure()["out"].scalars() == plain["out"].scalars()


# ---- the README's plain-PyTorch example and a healthy run


def _phantom_slices() -> tuple[torch.Tensor, torch.Tensor]:
    from collapsekit.data import PhantomConfig, load_split, select_slices, slice_tensor

    vols = load_split("phantom", split="all", phantom=PhantomConfig(cases=6, size=64, validation=0))
    images = slice_tensor(vols, select_slices(vols, 256), 64)
    return images[:192], images[192:]


def _toy(projector_bn: bool) -> nn.Sequential:
    model = nn.Sequential()
    model.backbone = nn.Sequential(nn.Conv2d(1, 64, 5, 4, 2), nn.BatchNorm2d(64), nn.ReLU())
    model.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    norm: nn.Module = nn.BatchNorm1d(64) if projector_bn else nn.Identity()
    model.projector = nn.Sequential(nn.Linear(64, 64), norm, nn.ReLU(), nn.Linear(64, 32))
    return model


def test_the_readme_example_raises_a_collapse_warning() -> None:
    """README 'Monitor collapse in your own training loop', plain PyTorch, verbatim loop."""
    torch.manual_seed(0)
    train_x, held_out = _phantom_slices()
    model = _toy(projector_bn=False)

    def info_nce(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        z1 = F.normalize(model(x + 0.1 * torch.randn_like(x)), dim=1)
        z2 = F.normalize(model(x.flip(-1)), dim=1)
        return F.cross_entropy(z1 @ z2.T / 0.2, torch.arange(len(x)))

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    monitor = CollapseMonitor(model, held_out, layers=["backbone", "projector"], every=10)
    with pytest.warns(CollapseWarning) as record:
        for step in range(1, 51):
            opt.zero_grad()
            info_nce(model, train_x[torch.randint(len(train_x), (32,))]).backward()
            opt.step()
            monitor.maybe_measure(step)
    last = monitor.history[-1]
    assert last["projector"].effective_rank_lambda < 1.5  # of 32
    assert any("step 50: projector effective_rank_lambda" in str(w.message) for w in record)
    assert last.health is not None and last.health.health is Health.COLLAPSED
    assert last["backbone"].pooling == "mean over space of (B, 64, 16, 16)"


@pytest.mark.slow
def test_a_healthy_run_raises_no_warning() -> None:
    """The same toy with BatchNorm in the projector and a mild augmentation trains healthily
    (in-batch loss 0.69 of ln 32 = 3.47; projector effective rank (λ) 6.0 of 32, mean cosine
    0.51)."""
    torch.manual_seed(0)
    train_x, held_out = _phantom_slices()
    model = _toy(projector_bn=True)

    def aug(x: torch.Tensor) -> torch.Tensor:
        return x * (1 + 0.1 * torch.randn(len(x), 1, 1, 1)) + 0.05 * torch.randn_like(x)

    def info_nce(x: torch.Tensor) -> torch.Tensor:
        z1, z2 = F.normalize(model(aug(x)), dim=1), F.normalize(model(aug(x)), dim=1)
        return F.cross_entropy(z1 @ z2.T / 0.2, torch.arange(len(x)))

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = CollapseMonitor(model, held_out, layers=["backbone", "projector"], every=25)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        for step in range(1, 101):
            opt.zero_grad()
            loss = info_nce(train_x[torch.randint(len(train_x), (32,))])
            loss.backward()
            opt.step()
            res = monitor.maybe_measure(step)
    assert res is not None and res.alerts == ()
    assert res["projector"].effective_rank_lambda > 3 and res["projector"].mean_cosine < 0.8
    # the backbone's pooled ReLU features are nonnegative: a high cosine there is no collapse
    assert res["backbone"].mean_cosine > 0.95
    assert res.health is not None and res.health.health is Health.UNKNOWN


def test_a_random_encoder_with_recalibrated_batch_norm_raises_no_warning() -> None:
    from collapsekit.models import recalibrate_batch_norm
    from collapsekit.models.builder import ModelConfig, build_encoder

    torch.manual_seed(0)
    train_x, held_out = _phantom_slices()
    encoder = build_encoder(ModelConfig(arch="resnet18"))
    recalibrate_batch_norm(encoder.backbone, train_x)

    def spaces(x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = encoder.features(x)
        return {"backbone": fmap, "projector": encoder.project(fmap)}

    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        res = CollapseMonitor(spaces, held_out, module=encoder).measure()
    assert res.alerts == () and res["projector"].effective_rank_lambda > 10
    assert res["backbone"].pooling == "mean over space of (B, 512, 2, 2)"


# ---- DistributedDataParallel, measured on rank 0 only


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        ddp = nn.parallel.DistributedDataParallel(net)  # broadcast_buffers: a collective forward
        x = torch.randn(12, 1, 8, 8)
        ddp(x).sum().backward()  # one real DDP step on both ranks
        if rank == 0:
            mon = CollapseMonitor(ddp, x, layers={"bn": "module.1", "out": "3"}, warn=False)
            res = mon.measure(step=1)
            torch.save({"d": res["out"].spectrum.d, "pool": res["bn"].pooling}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ddp_model_measured_on_rank_zero_alone_does_not_hang(tmp_path: object) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path) + "/res.pt"  # type: ignore[operator]
    ctx = mp.start_processes(
        _ddp_worker, args=(_free_port(), out), nprocs=2, join=False, start_method="spawn"
    )
    try:
        for _ in range(120):  # at most 60 s: a hang fails instead of blocking the suite
            if ctx.join(timeout=0.5):
                break
        else:
            pytest.fail("rank 0 measuring a DDP model alone hung")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    res = torch.load(out)
    assert res == {"d": 4, "pool": "mean over space of (B, 8, 6, 6)"}


def test_a_plain_submodule_called_module_is_not_taken_for_a_wrapper() -> None:
    net = nn.Module()
    net.module = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    net.forward = lambda x: net.module(x)  # type: ignore[method-assign]
    mon = CollapseMonitor(net, torch.randn(10, 4), layers=["module.0"], warn=False)
    assert mon.layers == {"module.0": "module.0"}
    assert mon.measure()["module.0"].spectrum.d == 6
