"""Group ZCA whitening: ``y = Σ^{-1/2} (x − μ)`` per channel group, then a per-channel affine.

Feature decorrelation as used by Hassanpour et al. (ISBI 2024, arXiv 2402.14611) to overcome
dimensional collapse; the layer follows Decorrelated Batch Normalization (Huang et al., CVPR 2018)
and IterNorm (Huang et al., CVPR 2019): channels are split into ``G = C / d`` groups of ``d`` and
each group is whitened by the symmetric (ZCA) matrix ``W = (Σ + εI)^{-1/2}``, all groups solved as
one batched ``(G, d, d)`` problem. Statistics run over every position: ``B`` rows for ``(B, C)``
input, ``B·H·W`` rows for ``(B, C, H, W)``. ``Σ`` is the biased covariance (divides by ``m``, like
BatchNorm), so in train mode ``(1/m) Σ_n y_n y_nᵀ = Σ(Σ + εI)^{-1}`` per group: the identity up to
``ε``. No method can whiten ``d ≥ m`` (rank ``≤ m − 1``): keep ``d`` well below the sample count.

Two ways to form ``Σ^{-1/2}``:

* ``"eigh"``: ``Σ = U diag(λ) Uᵀ``, ``W = U diag(λ^{-1/2}) Uᵀ`` with ``λ`` clamped at 0 before adding
  ``ε`` (float32 eigh can return slightly negative eigenvalues). PyTorch's eigh backward divides by
  ``λ_i − λ_j`` and is NaN when eigenvalues repeat (isotropic input, ``d ≥ m``); here the backward is
  the Daleckii–Krein divided-difference formula ``∂W = U (K ∘ Uᵀ ∂Σ U) Uᵀ`` with
  ``K_ij = (f(λ_i) − f(λ_j)) / (λ_i − λ_j)`` for ``f(λ) = λ^{-1/2}``, evaluated in the closed form
  ``K_ij = −1 / (s_i s_j (s_i + s_j))``, ``s = √λ``, which has no cancellation and equals the analytic
  limit ``f'(λ) = −½ λ^{-3/2}`` when ``λ_i = λ_j``: finite for every input.
* ``"newton_schulz"``: the trace-normalised coupled Newton–Schulz iteration
  ``Y_0 = Σ/tr Σ, Z_0 = I, T_k = (3I − Z_k Y_k)/2, Y_{k+1} = Y_k T_k, Z_{k+1} = T_k Z_k``,
  ``W ≈ Z_T / √tr Σ``, differentiated by autograd through the unrolled loop. Only matrix products
  (fast on GPUs), but it converges slowly for small ``λ/tr Σ``: with ``T = 5`` it is far from white
  on ill-conditioned or high-dimensional groups (see ``benchmarks/train_step.py``).

Math runs in float32 (float64 for float64 input) with autocast disabled. Under ``torch.distributed``
the sums (first the mean, then the centred second moment) are all-reduced across ranks before
``Σ`` is formed, so every rank whitens with the global batch statistics (like ``SyncBatchNorm``).
In eval mode the running mean and running whitening matrix (updated with ``momentum`` in train
mode, ``r ← (1 − momentum) r + momentum · batch``) are used; both are saved in the state dict.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from collapsekit.errors import ConfigError
from collapsekit.models.distributed import all_reduce_sum, is_dist
from collapsekit.options import look_up_option

__all__ = [
    "ZCA_METHODS",
    "ZCAWhitening",
    "inv_sqrt_eigh",
    "inv_sqrt_newton_schulz",
    "whitening_matrix",
]

ZCA_METHODS = ("eigh", "newton_schulz")


def _sym(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


class _EighInvSqrt(torch.autograd.Function):
    """``A ↦ (sym(A)⁺ + εI)^{-1/2}`` by eigh, with the Daleckii–Krein backward (finite for ties)."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, eps: float) -> torch.Tensor:
        lam, u = torch.linalg.eigh(_sym(a))
        s = torch.sqrt(lam.clamp_min(0.0) + eps)  # s = √λ', λ' ≥ ε
        w = (u / s.unsqueeze(-2)) @ u.transpose(-1, -2)  # U diag(1/s) Uᵀ
        ctx.save_for_backward(u, s)
        return w

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        u, s = ctx.saved_tensors
        # K_ij = (f(λi) − f(λj)) / (λi − λj) for f = λ^{-1/2}, exact closed form (= f'(λ) on ties)
        si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
        k = -1.0 / (si * sj * (si + sj))
        ut = u.transpose(-1, -2)
        g = u @ (k * (ut @ _sym(grad) @ u)) @ ut
        return _sym(g), None


def inv_sqrt_eigh(cov: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``(Σ + εI)^{-1/2}`` of symmetric ``(..., d, d)`` matrices by eigendecomposition.

    Eigenvalues are clamped at 0 before adding ``ε``; the input is symmetrised first. The backward
    pass uses the divided-difference formula and is finite for repeated eigenvalues.
    """
    out: torch.Tensor = _EighInvSqrt.apply(cov, eps)
    return out


def inv_sqrt_newton_schulz(cov: torch.Tensor, eps: float = 1e-4, iters: int = 5) -> torch.Tensor:
    """``(Σ + εI)^{-1/2}`` of symmetric ``(..., d, d)`` matrices by the coupled Newton–Schulz iteration.

    Trace-normalised (eigenvalues of ``Y_0`` lie in ``(0, 1]``, so the iteration converges); error
    shrinks with ``iters`` and with ``λ_min / tr Σ``. Differentiable by autograd.
    """
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    a = _sym(cov) + eps * eye
    tr = a.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    y = a / tr
    z = eye.expand_as(a)
    for _ in range(iters):
        t = 0.5 * (3.0 * eye - z @ y)
        y = y @ t
        z = t @ z
    return z / torch.sqrt(tr)


def whitening_matrix(
    cov: torch.Tensor, method: str = "eigh", eps: float = 1e-4, ns_iters: int = 5
) -> torch.Tensor:
    """The ZCA whitening matrix ``W = (Σ + εI)^{-1/2}`` of ``(..., d, d)`` covariances.

    Args:
        cov: symmetric positive semi-definite matrices ``(..., d, d)``.
        method: ``"eigh"`` (exact) or ``"newton_schulz"`` (``ns_iters`` iterations).
        eps: ridge added to the eigenvalues.
        ns_iters: Newton–Schulz iterations.

    Returns:
        ``(..., d, d)`` symmetric matrices with ``W Σ W ≈ I``.
    """
    method = look_up_option(method, ZCA_METHODS, "zca method")
    if method == "eigh":
        return inv_sqrt_eigh(cov, eps)
    return inv_sqrt_newton_schulz(cov, eps, ns_iters)


class ZCAWhitening(nn.Module):
    """Group ZCA whitening layer (see the module docstring for the math).

    Args:
        num_features: channels ``C``.
        group_size: channels per group ``d``; must divide ``C``. ``G = C // d`` groups.
        method: ``"eigh"`` or ``"newton_schulz"``.
        eps: ridge ``ε`` added to the covariance eigenvalues.
        momentum: running-statistics momentum (as in BatchNorm: weight of the new batch).
        affine: learn a per-channel scale (init 1) and shift (init 0) applied after whitening.
        ns_iters: Newton–Schulz iterations ``T``.

    Shapes:
        input ``(B, C)`` or ``(B, C, H, W)``; output the same shape and dtype.

    Buffers:
        ``running_mean`` ``(C,)`` and ``running_whitening`` ``(G, d, d)`` (init: 0 and identity).

    Raises:
        ConfigError: ``group_size`` does not divide ``num_features``, unknown method, bad numbers.
    """

    running_mean: torch.Tensor
    running_whitening: torch.Tensor

    def __init__(
        self,
        num_features: int,
        group_size: int = 64,
        method: str = "eigh",
        eps: float = 1e-4,
        momentum: float = 0.1,
        affine: bool = True,
        ns_iters: int = 5,
    ) -> None:
        super().__init__()
        if num_features < 1 or group_size < 1 or num_features % group_size:
            raise ConfigError(
                f"ZCA group size {group_size} must divide the number of channels {num_features}"
            )
        if eps <= 0:
            raise ConfigError(f"ZCA eps must be > 0, got {eps}")
        if not 0.0 < momentum <= 1.0:
            raise ConfigError(f"ZCA momentum must be in (0, 1], got {momentum}")
        if ns_iters < 1:
            raise ConfigError(f"ZCA Newton-Schulz iterations must be >= 1, got {ns_iters}")
        self.num_features = num_features
        self.group_size = group_size
        self.num_groups = num_features // group_size
        self.method = look_up_option(method, ZCA_METHODS, "zca method")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = affine
        self.ns_iters = int(ns_iters)
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        eye = torch.eye(group_size).expand(self.num_groups, group_size, group_size).clone()
        self.register_buffer("running_whitening", eye)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, group_size={self.group_size}, method={self.method}, "
            f"eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
            + (f", ns_iters={self.ns_iters}" if self.method == "newton_schulz" else "")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected (B, {self.num_features}) or (B, {self.num_features}, H, W) input, "
                f"got shape {tuple(x.shape)}"
            )
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        c, g, d = self.num_features, self.num_groups, self.group_size
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(dtype)
            flat = xf.transpose(0, 1).reshape(c, -1)  # C × m, m = B·H·W
            m = flat.shape[1]
            if self.training:
                # two passes (global mean, then centred second moment): exact under DDP
                stats = torch.cat([flat.sum(dim=1), flat.new_tensor([float(m)])])
                stats = all_reduce_sum(stats) if is_dist() else stats
                total = stats[-1]
                mean = stats[:-1] / total
                xc = (flat - mean[:, None]).reshape(g, d, m)
                second = xc @ xc.transpose(1, 2)  # G × d × d
                second = all_reduce_sum(second) if is_dist() else second
                w = whitening_matrix(second / total, self.method, self.eps, self.ns_iters)
                with torch.no_grad():
                    r = self.momentum
                    self.running_mean.mul_(1 - r).add_(
                        mean.detach().to(self.running_mean.dtype), alpha=r
                    )
                    self.running_whitening.mul_(1 - r).add_(
                        w.detach().to(self.running_whitening.dtype), alpha=r
                    )
            else:
                mean = self.running_mean.to(dtype)
                w = self.running_whitening.to(dtype)
                xc = (flat - mean[:, None]).reshape(g, d, m)
            if self.weight is not None and self.bias is not None:
                # affine folded into one batched GEMM: y = diag(γ) W xc + β
                w = w * self.weight.to(dtype).reshape(g, d, 1)
                y = torch.baddbmm(self.bias.to(dtype).reshape(g, d, 1), w, xc)
            else:
                y = w @ xc
            y = y.reshape(c, x.shape[0], *x.shape[2:]).transpose(0, 1).contiguous()
        return y.to(x.dtype)
