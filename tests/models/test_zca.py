"""ZCA whitening: whiteness, the exact matrix, running stats, and gradients that survive ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from collapsekit.errors import ConfigError
from collapsekit.models.zca import (
    ZCAWhitening,
    inv_sqrt_eigh,
    inv_sqrt_newton_schulz,
    whitening_matrix,
)


def _correlated(n: int, c: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c, c, generator=g, dtype=torch.float64)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) @ mix + 3.0
    return x.to(dtype)


def _group_cov(y: torch.Tensor, d: int) -> torch.Tensor:
    """Biased covariance of each group of ``d`` channels of ``(m, C)`` rows -> ``(G, d, d)``."""
    yc = y - y.mean(0)
    g = y.shape[1] // d
    yg = yc.T.reshape(g, d, -1)
    return yg @ yg.transpose(1, 2) / y.shape[0]


@pytest.mark.parametrize("method,iters", [("eigh", 5), ("newton_schulz", 30)])
def test_output_covariance_is_identity_per_group(method: str, iters: int) -> None:
    x = _correlated(4096, 16)
    layer = ZCAWhitening(16, group_size=8, method=method, eps=1e-6, ns_iters=iters)
    y = layer(x).detach().double()
    cov = _group_cov(y, 8)
    torch.testing.assert_close(
        cov, torch.eye(8, dtype=torch.float64).expand(2, 8, 8), atol=2e-3, rtol=0
    )
    # the two groups are whitened separately: cross-group covariance is not zero
    full = torch.cov(y.T, correction=0)
    assert full[:8, 8:].abs().max() > 0.05


def test_4d_input_uses_all_positions() -> None:
    x4 = _correlated(8 * 5 * 5, 16).reshape(8, 5, 5, 16).permute(0, 3, 1, 2).contiguous()
    layer = ZCAWhitening(16, group_size=4)
    y4 = layer(x4)
    rows = x4.permute(0, 2, 3, 1).reshape(-1, 16)
    y2 = ZCAWhitening(16, group_size=4)(rows)
    torch.testing.assert_close(y4.permute(0, 2, 3, 1).reshape(-1, 16), y2, atol=1e-5, rtol=1e-5)
    assert y4.shape == x4.shape


def test_whitening_matrix_equals_numpy_eigendecomposition() -> None:
    x = _correlated(256, 12, seed=1, dtype=torch.float64)
    eps = 1e-3
    layer = ZCAWhitening(12, group_size=6, eps=eps, affine=False).double()
    y = layer(x).detach().numpy()
    xn = x.numpy()
    for gi in range(2):
        block = xn[:, gi * 6 : (gi + 1) * 6]
        cov = np.cov(block.T, bias=True)
        lam, u = np.linalg.eigh(cov)
        w = u @ np.diag((lam + eps) ** -0.5) @ u.T
        expected = (block - block.mean(0)) @ w.T
        np.testing.assert_allclose(y[:, gi * 6 : (gi + 1) * 6], expected, rtol=1e-9, atol=1e-9)


def test_running_statistics_momentum() -> None:
    x = _correlated(512, 8, dtype=torch.float64)
    layer = ZCAWhitening(8, group_size=4, momentum=0.1).double()
    layer(x)
    cov = torch.stack([torch.cov(x[:, 4 * i : 4 * i + 4].T) for i in range(2)])  # unbiased
    torch.testing.assert_close(layer.running_mean, 0.1 * x.mean(0))
    torch.testing.assert_close(
        layer.running_cov, 0.9 * torch.eye(4, dtype=torch.float64) + 0.1 * cov
    )


def test_eval_uses_only_running_statistics() -> None:
    layer = ZCAWhitening(4, group_size=2).double()
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        layer.running_cov.copy_(a @ a.transpose(1, 2) + 0.5 * torch.eye(2, dtype=torch.float64))
        layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        layer.weight.copy_(torch.tensor([2.0, 1.0, -1.0, 0.5]))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    layer.eval()
    before = [b.clone() for b in layer.buffers()]
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = layer(x)
    w = torch.block_diag(*inv_sqrt_eigh(layer.running_cov, layer.eps))
    expected = (x - layer.running_mean) @ w.T * layer.weight + layer.bias
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(layer(x[2:3]), y[2:3])  # a row's output does not depend on the batch
    for b0, b1 in zip(before, layer.buffers(), strict=True):
        assert torch.equal(b0, b1)
    # the cached eval matrix follows a change of the buffers (e.g. load_state_dict)
    with torch.no_grad():
        layer.running_cov.copy_(torch.eye(2, dtype=torch.float64).expand(2, 2, 2) * 4.0)
    torch.testing.assert_close(
        layer(x), (x - layer.running_mean) / (4.0 + layer.eps) ** 0.5 * layer.weight + layer.bias
    )


def test_eval_mode_output_is_white_on_the_training_distribution() -> None:
    # issue 10: an EMA of batch W is not Σ^{-1/2}; running covariance is. Tolerance: 0.05 on
    # every entry of each group's covariance (batches of 256 from a fixed distribution, 60 steps).
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(16, 16, generator=g) * torch.linspace(0.1, 3.0, 16)
    layer = ZCAWhitening(16, group_size=8, momentum=0.1, affine=False)
    for _ in range(60):
        layer(torch.randn(256, 16, generator=g) @ mix + 1.0)
    layer.eval()
    y = layer(torch.randn(20000, 16, generator=g) @ mix + 1.0).double()
    cov = _group_cov(y, 8)
    assert (cov - torch.eye(8, dtype=torch.float64)).abs().max() < 0.05
    assert y.mean(0).abs().max() < 0.05


def test_split_whitening_uses_contiguous_sub_batches() -> None:
    # num_splits=2: samples 0-7 and 8-15 are whitened with their own statistics, exactly like
    # SplitBatchNorm2d (shuffle-BN emulation on one process)
    x = _correlated(64, 8, seed=2, dtype=torch.float64).reshape(16, 8, 2, 2)
    layer = ZCAWhitening(8, group_size=4, num_splits=2, affine=False).double()
    y = layer(x)
    ref = ZCAWhitening(8, group_size=4, affine=False).double()
    torch.testing.assert_close(y[:8], ref(x[:8]))
    torch.testing.assert_close(y[8:], ref(x[8:]))
    # running statistics come from the whole batch
    rows = x.permute(0, 2, 3, 1).reshape(-1, 8)
    torch.testing.assert_close(layer.running_mean, 0.1 * rows.mean(0))
    # eval mode and a batch that the splits do not divide fall back to one set of statistics
    torch.testing.assert_close(layer(x[:5]), ref.train()(x[:5]))


@pytest.mark.parametrize("num_splits", [1, 2])
def test_channels_last_input_gives_the_same_output_in_channels_last(num_splits: int) -> None:
    x = _correlated(96, 16, seed=3, dtype=torch.float64).reshape(6, 16, 4, 4)
    layer = ZCAWhitening(16, group_size=4, num_splits=num_splits).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1.0, 1.0)
    xp = x.clone().requires_grad_()
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    yp, yc = layer(xp), layer(xc)
    assert yp.is_contiguous() and yc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yp, yc)
    grad = torch.randn_like(x)
    yp.backward(grad)
    yc.backward(grad)
    torch.testing.assert_close(xp.grad, xc.grad)


def test_old_checkpoints_with_running_whitening_load() -> None:
    layer = ZCAWhitening(8, group_size=4).double()
    cov = torch.cov(_correlated(512, 8, dtype=torch.float64).T)
    covs = torch.stack([cov[:4, :4], cov[4:, 4:]])
    state = {k: v for k, v in layer.state_dict().items() if k != "running_cov"}
    state["running_whitening"] = inv_sqrt_eigh(covs, layer.eps)
    layer.load_state_dict(state)
    torch.testing.assert_close(layer.running_cov, covs)


@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
def test_gradcheck_float64(method: str) -> None:
    layer = ZCAWhitening(6, group_size=3, method=method, ns_iters=8).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
    x = _correlated(10, 6, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)
    x4 = torch.randn(3, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x4,), eps=1e-6, atol=1e-5)


def test_eigh_gradcheck_at_repeated_eigenvalues() -> None:
    # isotropic, and two pairs of tied eigenvalues in a rotated basis (torch's eigh backward
    # divides by λi − λj and is not finite here)
    eye = (2.0 * torch.eye(4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: inv_sqrt_eigh(a, 1e-3), (eye,), eps=1e-7, atol=1e-5)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    tied = q @ torch.diag(torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=torch.float64)) @ q.T
    assert torch.autograd.gradcheck(
        lambda a: inv_sqrt_eigh(a, 1e-3), (tied.requires_grad_(),), eps=1e-7, atol=1e-5
    )


def test_eigh_gradient_matches_converged_newton_schulz() -> None:
    a = _correlated(64, 5, dtype=torch.float64)
    cov = torch.cov(a.T).requires_grad_()
    g = torch.randn(5, 5, dtype=torch.float64)
    (ge,) = torch.autograd.grad((inv_sqrt_eigh(cov, 1e-4) * g).sum(), cov)
    (gn,) = torch.autograd.grad((inv_sqrt_newton_schulz(cov, 1e-4, 60) * g).sum(), cov)
    torch.testing.assert_close(ge, 0.5 * (gn + gn.T), atol=1e-8, rtol=1e-6)


def _isotropic(m: int, d: int) -> torch.Tensor:
    """Rows ±2·e_i repeated: mean 0, covariance exactly (8/m)·I (all eigenvalues equal)."""
    eye = torch.eye(d)
    return torch.cat([2 * eye, -2 * eye] * (m // (2 * d)))


@pytest.mark.parametrize(
    "name,x",
    [
        ("isotropic", _isotropic(16, 8)),
        ("B<d", torch.randn(3, 8)),
        ("duplicated rows", torch.randn(4, 8).repeat(3, 1)),
    ],
)
@pytest.mark.parametrize("method", ["eigh", "newton_schulz"])
def test_finite_gradients_on_degenerate_inputs(name: str, x: torch.Tensor, method: str) -> None:
    layer = ZCAWhitening(8, group_size=8, method=method)
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), name
    assert torch.isfinite(layer.weight.grad).all()
    assert x.grad.abs().sum() > 0


def test_eigh_and_newton_schulz_agree_when_well_conditioned() -> None:
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(3, 16, 16, generator=g, dtype=torch.float64))
    lam = torch.rand(3, 16, generator=g, dtype=torch.float64) + 0.5  # eigenvalues in [0.5, 1.5]
    cov = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
    we = whitening_matrix(cov, "eigh", 1e-4)
    wn = whitening_matrix(cov, "newton_schulz", 1e-4, ns_iters=30)
    torch.testing.assert_close(we, wn, atol=1e-10, rtol=1e-10)
    # the layer agrees too (float32, 20 iterations)
    x = _correlated(2048, 16)
    ye = ZCAWhitening(16, 8, "eigh")(x)
    yn = ZCAWhitening(16, 8, "newton_schulz", ns_iters=20)(x)
    torch.testing.assert_close(ye, yn, atol=2e-3, rtol=0)


def test_newton_schulz_with_five_iterations_is_not_white_in_high_dimension() -> None:
    # known value (DESIGN.md): T=5 leaves isotropic 64-d groups far from white; T=20 is close
    cov = torch.eye(64, dtype=torch.float64)
    for iters, lo, hi in [(5, 0.3, 1.0), (20, 0.0, 1e-3)]:
        w = inv_sqrt_newton_schulz(cov, 0.0, iters)
        err = (w @ cov @ w - torch.eye(64, dtype=torch.float64)).abs().max().item()
        assert lo <= err <= hi, (iters, err)


def test_math_is_float32_under_autocast() -> None:
    x = _correlated(256, 8)
    layer = ZCAWhitening(8, group_size=8)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        yb = layer(x.bfloat16())
    assert y.dtype == torch.float32 and yb.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(yb.float(), ref, atol=0.1, rtol=0.05)  # only input rounding


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="must divide"):
        ZCAWhitening(512, group_size=48)
    with pytest.raises(ConfigError, match="did you mean 'newton_schulz'"):
        ZCAWhitening(8, 4, method="newton-shulz")
    with pytest.raises(ValueError, match=r"expected \(B, 8\)"):
        ZCAWhitening(8, 4)(torch.randn(3, 6))


def test_warns_when_a_statistic_has_fewer_than_2d_vectors() -> None:
    from collapsekit.models.zca import UndersampledWhiteningWarning

    layer = ZCAWhitening(16, group_size=8)
    with pytest.warns(UndersampledWhiteningWarning, match="groups of 8 channels from 15 vectors"):
        layer(_correlated(15, 16))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(_correlated(16, 16))  # m = 2d: no warning
        layer.eval()
        layer(_correlated(3, 16))  # eval mode whitens with running statistics


def test_automatic_group_size_keeps_four_samples_per_dimension() -> None:
    from collapsekit.models.builder import whitening_group_size, whitening_samples

    # ResNet-18 (512 channels), batch 32, 2 splits
    assert whitening_samples("pre_projector", 32, 2, 128) == 16
    assert whitening_samples("block", 32, 2, 128) == 16 * 4 * 4
    assert whitening_samples("block", 32, 2, 96) == 16 * 3 * 3
    assert whitening_samples("block", 32, 2, 64) == 16 * 2 * 2
    assert whitening_samples("pre_projector", 256, 2, 128) == 128
    assert whitening_group_size(512, 16) == 4
    assert whitening_group_size(512, 144) == 32  # the fair96 budget's block ZCA
    assert whitening_group_size(512, 64) == 16  # the demo's explicit choice
    assert whitening_group_size(512, 256) == 64  # capped
    assert whitening_group_size(512, 128) == 32
    assert whitening_group_size(2048, 3) == 1
    assert whitening_group_size(96, 100) == 24  # a divisor, not a power of two
    for m in range(1, 600, 7):
        d = whitening_group_size(512, m)
        assert 512 % d == 0 and (4 * d <= m or d == 1)


def test_pre_projector_output_is_white_with_four_samples_per_dimension() -> None:
    """MoCo at batch 64 with 2 splits: the pre-projector layer whitens 32 pooled vectors per
    sub-batch in groups of d = 8 (m = 4d); each sub-batch's output covariance is the identity."""
    from collapsekit.models import MoCo, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        method="zca",
        zca_placement="pre_projector",
        zca_group_size=8,
        zca_eps=1e-9,
        queue_size=64,
        shuffle_bn_splits=2,
    )
    model = MoCo(cfg).double().train()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    layer = model.encoder_q.pre_projector
    layer.register_forward_hook(lambda m, i, o: seen.append((i[0].detach(), o.detach())))
    x = torch.rand(64, 1, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        model._query_forward(x)
    ((inp, out),) = seen
    eye = torch.eye(8, dtype=out.dtype)
    for block in out.split(32):  # the layer's sub-batches (the split order's blocks)
        cov = _group_cov(block, 8)
        torch.testing.assert_close(cov, eye.expand_as(cov), atol=1e-5, rtol=0)
    assert (_group_cov(inp[:32], 8) - eye).abs().max() > 0.1  # the input was not white
    # the statistics are per sub-batch: one whitening of all 64 vectors gives other vectors
    whole = ZCAWhitening(512, group_size=8, eps=1e-9).double()
    assert (whole(inp) - out).abs().max() > 1e-2
