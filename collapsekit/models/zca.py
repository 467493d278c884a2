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

Math runs in float32 (float64 for float64 input) with autocast disabled. Statistics are never
shared by a query and its positive key: with ``num_splits = S`` the layer whitens ``S`` sub-batches
(contiguous blocks, like :class:`~collapsekit.models.split_bn.SplitBatchNorm2d`) separately on one
process, and under ``torch.distributed`` each rank whitens its own
batch (MoCo shuffles keys across ranks), the same rule as shuffle-BN. Whole-batch statistics would
let the positive key share the query batch's whitening while queued negatives do not — the
shortcut shuffle-BN exists to remove. In eval mode the layer whitens with ``(Σ_run + εI)^{-1/2}``
from the running mean and covariance (``r ← (1 − momentum) r + momentum · batch``, saved in the
state dict), so eval-mode output on the training distribution is white.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from collapsekit.errors import ConfigError
from collapsekit.models.distributed import is_dist
from collapsekit.options import look_up_option

__all__ = [
    "UndersampledWhiteningWarning",
    "ZCA_METHODS",
    "ZCAWhitening",
    "inv_sqrt_eigh",
    "inv_sqrt_newton_schulz",
    "whitening_matrix",
]

ZCA_METHODS = ("eigh", "newton_schulz")


class UndersampledWhiteningWarning(UserWarning):
    """A whitening statistic from fewer than ``2d`` vectors for groups of ``d`` channels.

    The whitened vector of one sample then depends strongly on the other samples of its
    sub-batch (cosine 0.80 between two sub-batches at ``d = 8, m = 16``; 0.95 at ``m = 64``,
    issue 20): noise no weight can remove. Keep ``m ≥ 4d`` (``zca_group_size = 0`` chooses so).
    """


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
        num_splits: in train mode on one process, whiten ``num_splits`` sub-batches (contiguous
            blocks: sample ``n`` of ``B`` in sub-batch ``⌊n S / B⌋``) with their own statistics,
            exactly like
            :class:`~collapsekit.models.split_bn.SplitBatchNorm2d` (MoCo's shuffle-BN emulation:
            a positive key must not share the query batch's statistics). Under
            ``torch.distributed`` every rank whitens its own batch (keys are shuffled across ranks).

    Shapes:
        input ``(B, C)`` or ``(B, C, H, W)``; output the same shape and dtype.

    Buffers:
        ``running_mean`` ``(C,)`` and ``running_cov`` ``(G, d, d)`` (init 0 and identity): moving
        averages of the whole local batch's mean and unbiased covariance. Eval mode whitens with
        ``W = (running_cov + εI)^{-1/2}`` (by eigh, cached until the buffers change), so its output
        on the training distribution is white; an average of per-batch ``W`` would not be.

    Raises:
        ConfigError: ``group_size`` does not divide ``num_features``, unknown method, bad numbers.
    """

    running_mean: torch.Tensor
    running_cov: torch.Tensor

    def __init__(
        self,
        num_features: int,
        group_size: int = 64,
        method: str = "eigh",
        eps: float = 1e-4,
        momentum: float = 0.1,
        affine: bool = True,
        ns_iters: int = 5,
        num_splits: int = 1,
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
        if num_splits < 1:
            raise ConfigError(f"ZCA num_splits must be >= 1, got {num_splits}")
        self.num_features = num_features
        self.group_size = group_size
        self.num_groups = num_features // group_size
        self.method = look_up_option(method, ZCA_METHODS, "zca method")
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.affine = affine
        self.ns_iters = int(ns_iters)
        self.num_splits = int(num_splits)
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
        self.register_buffer("running_cov", eye)
        self._eval_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, group_size={self.group_size}, method={self.method}, "
            f"eps={self.eps}, momentum={self.momentum}, affine={self.affine}"
            + (f", ns_iters={self.ns_iters}" if self.method == "newton_schulz" else "")
            + (f", num_splits={self.num_splits}" if self.num_splits > 1 else "")
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # checkpoints of collapsekit <= 0.1 kept an average of batch W: turn it into a covariance
        old, new = prefix + "running_whitening", prefix + "running_cov"
        if old in state_dict and new not in state_dict:
            w = state_dict.pop(old).double()
            eye = torch.eye(w.shape[-1], dtype=w.dtype)
            w_inv = torch.linalg.solve(w, eye.expand_as(w))
            state_dict[new] = (w_inv @ w_inv - self.eps * eye).to(self.running_cov.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def eval_whitening(self) -> torch.Tensor:
        """``(G, d, d)`` eval-mode matrices ``(running_cov + εI)^{-1/2}`` (float32/64, cached)."""
        cov = self.running_cov
        key = (cov.data_ptr(), cov._version, cov.device, cov.dtype)
        if self._eval_cache is None or self._eval_cache[0] != key:
            dtype = torch.float64 if cov.dtype == torch.float64 else torch.float32
            with torch.no_grad(), torch.autocast(device_type=cov.device.type, enabled=False):
                self._eval_cache = (key, inv_sqrt_eigh(cov.to(dtype), self.eps))
        return self._eval_cache[1]

    @torch.no_grad()
    def _update_running(self, flat: torch.Tensor) -> None:
        """EMA of the whole local batch's mean and unbiased covariance (``flat``: ``C × m``)."""
        g, d, m = self.num_groups, self.group_size, flat.shape[1]
        mean = flat.mean(dim=1)
        xc = (flat - mean[:, None]).reshape(g, d, m)
        cov = xc @ xc.transpose(1, 2) / max(m - 1, 1)
        r = self.momentum
        self.running_mean.mul_(1 - r).add_(mean.to(self.running_mean.dtype), alpha=r)
        self.running_cov.mul_(1 - r).add_(cov.to(self.running_cov.dtype), alpha=r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected (B, {self.num_features}) or (B, {self.num_features}, H, W) input, "
                f"got shape {tuple(x.shape)}"
            )
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        c, g, d, b = self.num_features, self.num_groups, self.group_size, x.shape[0]
        s = 1 if is_dist() or not self.training else math.gcd(self.num_splits, b)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.to(dtype)
            # sample n -> sub-batch n // (B/s); rows of one sub-batch: (C, m) with m = (B/s)·H·W
            xs = xf.reshape(s, b // s, c, -1).permute(0, 2, 1, 3).reshape(s, c, -1)
            m = xs.shape[-1]
            if self.training and m < 2 * d:
                warnings.warn(
                    UndersampledWhiteningWarning(
                        f"ZCA whitens groups of {d} channels from {m} vectors per statistic "
                        f"(m < 2d): the whitening is mostly noise; use a group size <= {max(1, m // 4)} "
                        "(m >= 4d; zca_group_size 0 chooses it) or a larger batch"
                    ),
                    stacklevel=2,
                )
            if self.training:
                mean = xs.mean(dim=2)  # s × C
                xc = (xs - mean[:, :, None]).reshape(s * g, d, m)
                cov = xc @ xc.transpose(1, 2) / m  # (s·G) × d × d, biased like BatchNorm
                w = whitening_matrix(cov, self.method, self.eps, self.ns_iters)
                self._update_running(xs.detach().permute(1, 0, 2).reshape(c, -1))
            else:
                xc = (xs - self.running_mean.to(dtype)[None, :, None]).reshape(g, d, m)
                w = self.eval_whitening().to(dtype)
            w = w.reshape(s, g, d, d)
            if self.weight is not None and self.bias is not None:
                # affine folded into one batched GEMM: y = diag(γ) W xc + β
                w = w * self.weight.to(dtype).reshape(1, g, d, 1)
                bias = self.bias.to(dtype).reshape(1, g, d, 1).expand(s, g, d, 1)
                y = torch.baddbmm(bias.reshape(s * g, d, 1), w.reshape(s * g, d, d), xc)
            else:
                y = w.reshape(s * g, d, d) @ xc
            # back to (B, C, H, W), in the input's memory format (channels_last stays so)
            y = y.reshape(s, c, b // s, -1)  # (s, C, B/s, H·W)
            if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
                y = y.permute(0, 2, 3, 1).reshape(b, *x.shape[2:], c).permute(0, 3, 1, 2)
                y = y.contiguous(memory_format=torch.channels_last)  # no copy when s > 1
            else:
                y = y.permute(0, 2, 1, 3).reshape(x.shape).contiguous()
        return y.to(x.dtype)
