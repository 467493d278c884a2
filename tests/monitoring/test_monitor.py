from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.diagnostics.health import Health
from collapsekit.errors import ConfigError, InputError
from collapsekit.monitoring import CollapseMonitor, CollapseWarning, MonitorResult


class Net(nn.Module):
    """A conv backbone (feature map), global pooling and a projector, with BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.seen: list[tuple[bool, bool]] = []  # (training, grad enabled) at each forward

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.head(self.backbone(x).mean(dim=(2, 3)))

    def both(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append((self.training, torch.is_grad_enabled()))
        h = self.backbone(x).mean(dim=(2, 3))
        return {"backbone": h, "projector": self.head(h)}


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    net.train()
    for _ in range(3):  # give BatchNorm running statistics that differ from batch statistics
        net(torch.randn(16, 1, 8, 8) * 3 + 1)
    net.seen.clear()
    return net


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _expected(z: torch.Tensor) -> dict[str, float]:
    """The diagnostics functions themselves, called directly on ``z``."""
    s = spectrum_report(z, normalize=True)
    return {
        "effective_rank_sigma": s.effective_rank_sigma,
        "effective_rank_lambda": s.effective_rank_lambda,
        "rankme": s.rankme,
        "alpha": s.alpha,
        "std_l2": s.std_l2,
        "mean_cosine": pairwise_cosine_stats(z, max_samples=2048).mean_cosine,
    }


def test_values_are_the_diagnostics_of_the_eval_mode_embeddings(images: torch.Tensor) -> None:
    net = _net()
    res = CollapseMonitor(net.both, images, batch_size=16).measure(step=7)
    net.eval()
    with torch.no_grad():
        ref = net.both(images)
    assert res.step == 7 and set(res.spaces) == {"backbone", "projector"}
    for space in ("backbone", "projector"):
        assert res[space].scalars() == pytest.approx(_expected(ref[space]), rel=1e-9)
        assert res[space].spectrum.d == ref[space].shape[1] and res[space].spectrum.n == 40
    assert res.scalars("collapse/")["collapse/projector/rankme"] == res["projector"].rankme


def test_eval_mode_no_grad_and_each_submodule_mode_restored(images: torch.Tensor) -> None:
    net = _net()
    net.head.eval()  # a user's frozen part stays frozen, the rest stays in training
    CollapseMonitor(net.both, images).measure()
    assert net.seen == [(False, False)]  # bound method -> its module switched to eval
    assert net.training and net.backbone[1].training and not net.head.training
    assert not any(p.grad is not None for p in net.parameters())


def test_hooked_layers_equal_the_callable(images: torch.Tensor) -> None:
    net = _net()
    hooked = CollapseMonitor(net, images, layers={"backbone": "backbone", "projector": "head"})
    by_fn = CollapseMonitor(net.both, images)
    a, b = hooked.measure(), by_fn.measure()
    for space in ("backbone", "projector"):  # the (B, 8, 8, 8) map is average-pooled
        assert a[space].scalars() == pytest.approx(b[space].scalars(), rel=1e-9)
    # hooks are removed after the pass
    assert not net.backbone._forward_hooks and not net.head._forward_hooks
    names = CollapseMonitor(net, images, layers=["head.0"]).measure()
    assert set(names.spaces) == {"head.0"} and names["head.0"].spectrum.d == 16


def test_loader_batches_tuples_and_dicts_equal_a_tensor(images: torch.Tensor) -> None:
    net = _net()
    ref = CollapseMonitor(net, images).measure()["embeddings"].scalars()
    tuples = DataLoader(TensorDataset(images, torch.zeros(40)), batch_size=7)
    dicts = [{"image": images[i : i + 9], "label": None} for i in range(0, 40, 9)]
    for data in (tuples, dicts):
        got = CollapseMonitor(net, data).measure()["embeddings"].scalars()
        assert got == pytest.approx(ref, rel=1e-6)


def test_every_n_steps_and_history(images: torch.Tensor) -> None:
    mon = CollapseMonitor(_net(), images, every=3)
    done = [s for s in range(8) if mon.maybe_measure(s) is not None]
    assert done == [0, 3, 6] and [r.step for r in mon.history] == [0, 3, 6]
    quiet = CollapseMonitor(_net(), images, keep_history=False)
    quiet.measure()
    assert quiet.history == []


class RankOne(nn.Module):
    """Every input maps onto one direction (complete dimensional collapse)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(dim=1, keepdim=True).abs() * self.w + 1


def test_collapse_warns_and_a_healthy_space_does_not() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 4, 4, generator=g)
    mon = CollapseMonitor(RankOne(), x, std_fraction=0.5, rank_fraction=0.02)
    with pytest.warns(CollapseWarning) as record:
        res = mon.measure(step=5)
    texts = [str(w.message) for w in record]
    assert len(texts) == 4 and res.alerts == tuple(texts)
    # every row points the same way: no variance left at all (rank 0 of the centred matrix)
    assert texts[0] == (
        "step 5: embeddings effective_rank_lambda 0.00 is below 1.5 (D=32; N=200 rows, "
        "L2-normalised): the embeddings have collapsed to about one direction"
    )
    assert "mean_cosine 1.000 is at or above 0.95 (200 rows)" in texts[1]
    assert "effective_rank_sigma 0.0 is below 2% of the width" in texts[2]
    assert "std_l2 0.0000 is below 0.5/√32" in texts[3]
    assert res["embeddings"].std_l2 == pytest.approx(0.0, abs=1e-7)
    assert res.health is not None and res.health.health is Health.COLLAPSED
    assert res.health_space == "embeddings"

    iso = torch.randn(200, 32, generator=g)  # isotropic: rank ≈ D, std ≈ 1/√D, cosine ≈ 0
    healthy = CollapseMonitor(nn.Identity(), iso, std_fraction=0.5, rank_fraction=0.02)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = healthy.measure()
    assert res.alerts == () and res["embeddings"].effective_rank_sigma > 0.8 * 32
    assert abs(res["embeddings"].std_l2 * math.sqrt(32) - 1) < 0.1
    # only collapse signals given, and they pass: learning unknown
    assert res.health is not None and res.health.health is Health.UNKNOWN
    # warn=False keeps the alerts but raises nothing; warn_spaces limits the watched spaces
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silent = CollapseMonitor(RankOne(), x, warn=False).measure()
        unwatched = CollapseMonitor(RankOne(), x, warn_spaces=("projector",)).measure()
        off = CollapseMonitor(RankOne(), x, min_rank_lambda=None, max_cosine=None).measure()
    assert len(silent.alerts) == 2 and unwatched.alerts == () and off.alerts == ()


def test_training_signals_join_the_health_verdict() -> None:
    iso = torch.randn(200, 32, generator=torch.Generator().manual_seed(0))
    mon = CollapseMonitor(nn.Identity(), iso)
    # loss 6.5 against ln(1025) = 6.93: above 0.9·ln(K+1) = 6.24, not learning
    res = mon.measure(1, loss_global=6.5, queue_size=1024, top1_in_batch=0.5, batch_size=32)
    assert res.health is not None and res.health.health is Health.NOT_LEARNING
    assert res.health.reasons == ("loss_global 6.50 > 0.9·ln(K+1) = 6.24",)
    ok = mon.measure(2, loss_global=3.0, queue_size=1024)
    assert ok.health is not None and ok.health.health is Health.HEALTHY
    with pytest.raises(ConfigError, match="unexpected keyword"):
        mon.measure(3, loss=1.0)


def test_bad_arguments_raise_one_clear_error(images: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="every must be >= 1"):
        CollapseMonitor(_net(), images, every=0)
    with pytest.raises(ConfigError, match="has no submodule 'encoder'"):
        CollapseMonitor(_net(), images, layers=["encoder"])
    with pytest.raises(ConfigError, match="needs a module"):
        CollapseMonitor(lambda x: x, images, layers=["x"])
    with pytest.raises(InputError, match="got str"):
        CollapseMonitor(_net(), ["not a batch"]).measure()
    with pytest.raises(InputError, match=r"embeddings: cannot pool a 1-D output \(40\); \(B, D\)"):
        CollapseMonitor(lambda x: x[:, 0, 0, 0], images).measure()  # (B,) is no embedding
    with pytest.raises(ConfigError, match="pool must be one of mean, cls, channels_first"):
        CollapseMonitor(_net(), images, pool="max")  # type: ignore[arg-type]


def test_result_is_frozen(images: torch.Tensor) -> None:
    res = CollapseMonitor(_net(), images).measure()
    assert isinstance(res, MonitorResult)
    with pytest.raises(AttributeError):
        res.step = 3  # type: ignore[misc]


def test_diagnose_given_embeddings_is_measure_without_the_forward(images: torch.Tensor) -> None:
    net = _net()
    mon = CollapseMonitor(net.both, images)
    spaces = mon.embeddings()
    assert {k: v.shape for k, v in spaces.items()} == {
        "backbone": (40, 8),
        "projector": (40, 4),
    }
    direct = mon.diagnose(spaces, step=3)
    assert direct.step == 3
    for space in spaces:
        assert direct[space].scalars() == _expected(spaces[space])
        assert direct[space].scalars() == mon.measure()[space].scalars()


@pytest.mark.gpu
def test_cuda_model_with_held_out_batch_on_the_cpu(images: torch.Tensor) -> None:
    """A model on CUDA, the held-out set on the CPU (as a user keeps it): the monitor moves the
    batches to the model's device and gives the values of the CPU model within float32 rounding."""
    net = _net()
    cpu = CollapseMonitor(net, images, layers=["backbone", "head"], batch_size=16).measure(step=1)
    net.cuda()
    gpu = CollapseMonitor(net, images, layers=["backbone", "head"], batch_size=16).measure(step=1)
    assert next(net.parameters()).is_cuda and net.training
    for space in ("backbone", "head"):
        a, b = cpu[space].scalars(), gpu[space].scalars()
        assert b == pytest.approx(a, rel=1e-3, abs=1e-5)
