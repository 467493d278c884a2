"""Singular spectrum of the embedding covariance and the collapse measures read from it.

Dimensional collapse (Jing et al., "Understanding dimensional collapse in contrastive
self-supervised learning", ICLR 2022) shows as a covariance spectrum whose tail drops to zero. This
module computes that spectrum for an in-memory ``(N, D)`` matrix and summarises it in a
:class:`SpectrumResult`; :class:`~collapsekit.diagnostics.streaming.SpectrumAccumulator` builds the
same result from batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from collapsekit.diagnostics.rank import as_spectrum, effective_rank, numerical_rank
from collapsekit.diagnostics.validation import as_embeddings, l2_normalize_rows
from collapsekit.errors import InputError
from collapsekit.glossary import canonical_key, lookup

__all__ = [
    "singular_spectrum",
    "alpha_req",
    "explained_variance",
    "std_of_l2_normalized",
    "SpectrumResult",
    "summarize_spectrum",
    "spectrum_report",
    "data_precision",
]

# Rows per float64 block: bounds the extra memory of the one-shot path to one block + O(D^2).
_BLOCK_ROWS = 8192
_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)


def _float64_blocks(z: torch.Tensor, normalize: bool) -> Iterator[torch.Tensor]:
    """Row blocks of ``z`` as fresh float64 tensors, row-L2-normalised if asked."""
    for block in z.split(_BLOCK_ROWS):
        y = block.to(torch.float64, copy=True)
        yield l2_normalize_rows(y, inplace=True, strict=True) if normalize else y


def _eigvalsh_desc(m: torch.Tensor, d: int) -> torch.Tensor:
    """Eigenvalues of the symmetric PSD ``m``, clamped at 0, descending, zero-padded to ``d``."""
    ev = torch.linalg.eigvalsh(m).clamp_min(0.0).flip(0)
    if ev.shape[0] < d:
        ev = torch.cat([ev, ev.new_zeros(d - ev.shape[0])])
    return ev


def _spectra(
    z: torch.Tensor, normalize: bool, *, uncentered: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Covariance eigenvalues (and those of the raw ``ZᵀZ``) of a validated ``(N, D)`` tensor.

    ``N > D``: two float64 passes over row blocks (exact mean, then the centred ``YᵀY``), so the
    extra memory is one block plus ``D x D``. ``N <= D``: the ``N x N`` Gram matrices, which have
    the same nonzero eigenvalues, padded with zeros to length ``D``.
    """
    n, d = z.shape
    if n > d:
        total = torch.zeros(d, dtype=torch.float64, device=z.device)
        for y in _float64_blocks(z, normalize):
            total += y.sum(dim=0)
        mean = total / n
        gram = torch.zeros(d, d, dtype=torch.float64, device=z.device)
        for y in _float64_blocks(z, normalize):
            y -= mean
            gram.addmm_(y.T, y)  # gram: D×D += (b×D)ᵀ (b×D)
        cov = _eigvalsh_desc(gram / (n - 1), d)
        # ZᵀZ = (Z - 1 mean)ᵀ (Z - 1 mean) + n mean meanᵀ
        raw = _eigvalsh_desc(gram + n * torch.outer(mean, mean), d) if uncentered else None
        return cov, raw
    y = z.to(torch.float64, copy=True)
    if normalize:
        l2_normalize_rows(y, inplace=True, strict=True)
    yc = y - y.mean(dim=0)
    cov = _eigvalsh_desc(yc @ yc.T / (n - 1), d)  # N×N, same nonzero eigenvalues as D×D
    raw = _eigvalsh_desc(y @ y.T, d) if uncentered else None
    return cov, raw


def singular_spectrum(z: Any, *, normalize: bool = True) -> torch.Tensor:
    """Singular values of the embedding covariance, sorted descending.

    ``C = 1/(N-1) sum_i (z_i - zbar)(z_i - zbar)ᵀ`` over the (optionally row-L2-normalised) rows
    ``z_i`` (Jing et al., "Understanding dimensional collapse in contrastive self-supervised
    learning", ICLR 2022). ``C`` is symmetric PSD, so its singular values are its eigenvalues; they
    are computed in float64 with ``eigvalsh`` and clamped at 0. Equal to
    ``np.linalg.svd(np.cov(z.T), compute_uv=False)`` (without normalisation).

    Known values: ``D`` equal values for isotropic data; at most ``min(D, N-1)`` nonzero values.

    Args:
        z: ``(N, D)`` embeddings, numpy or torch on any device.
        normalize: L2-normalise each row first (the convention of Jing et al.).

    Returns:
        ``(D,)`` float64 tensor on ``z``'s device, descending.

    Raises:
        InputError: bad shape/dtype, ``N < 2`` or NaN/inf rows (see :func:`as_embeddings`).
    """
    cov, _ = _spectra(as_embeddings(z), normalize, uncentered=False)
    return cov


def alpha_req(eigenvalues: Any, *, fit_range: tuple[int, int] | None = None) -> tuple[float, float]:
    """Power-law exponent ``alpha`` of an eigenspectrum ``lambda_i ∝ i^-alpha`` and its R².

    Least squares of ``log lambda_i`` against ``log i`` (``i = 1, 2, ...`` the rank in descending
    order) over the positive eigenvalues; ``alpha`` is minus the slope (Agrawal et al.,
    "alpha-ReQ: assessing representation quality in self-supervised learning by measuring
    eigenspectrum decay", NeurIPS 2022). ``alpha > 0`` for decaying spectra, 0 for a flat one;
    Agrawal et al. find good representations near ``alpha ≈ 1``.

    Args:
        eigenvalues: ``(D,)`` nonnegative eigenvalues (sorted here, descending).
        fit_range: ``(start, stop)``, 0-based half-open positions in the descending spectrum to fit
            (e.g. ``(0, numerical_rank)`` to leave out the rounding-noise tail); default all.

    Returns:
        ``(alpha, r2)``; ``r2 = 1 - SS_res / SS_tot`` in log space (1.0 for an exact fit, also of a
        flat spectrum).

    Raises:
        InputError: bad eigenvalues, a bad ``fit_range``, or fewer than 2 positive values to fit.
    """
    lam = np.sort(as_spectrum(eigenvalues, name="eigenvalues"))[::-1]
    start, stop = (0, len(lam)) if fit_range is None else fit_range
    if not 0 <= start < stop <= len(lam):
        raise InputError(
            f"alpha_req: fit_range must satisfy 0 <= start < stop <= {len(lam)}, got {fit_range}"
        )
    ranks = np.arange(start + 1, stop + 1, dtype=np.float64)
    lam = lam[start:stop]
    keep = lam > 0
    if keep.sum() < 2:
        raise InputError(
            f"alpha_req: need at least 2 positive eigenvalues to fit, got {int(keep.sum())}"
        )
    x = np.log(ranks[keep])
    y = np.log(lam[keep])
    xc = x - x.mean()
    slope = float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))
    resid = y - y.mean() - slope * xc
    ss_res = float(np.dot(resid, resid))
    ss_tot = float(np.dot(y - y.mean(), y - y.mean()))
    r2 = 1.0 if ss_tot <= 1e-300 else 1.0 - ss_res / ss_tot
    return -slope, r2


def explained_variance(eigenvalues: Any, k: int | Sequence[int]) -> float | dict[int, float]:
    """Fraction of the total variance in the top ``k`` directions, ``sum_{i<=k} lambda_i / sum lambda``.

    Known values: ``k/D`` for isotropic data, 1.0 for rank one; ``k > D`` counts as ``D``.

    Args:
        eigenvalues: ``(D,)`` nonnegative covariance eigenvalues (sorted here, descending).
        k: one ``k >= 1`` or several.

    Returns:
        A float for one ``k``, ``{k: fraction}`` for several; NaN when all eigenvalues are 0 (no
        variance to explain).

    Raises:
        InputError: bad eigenvalues or ``k < 1``.
    """
    lam = np.sort(as_spectrum(eigenvalues, name="eigenvalues"))[::-1]
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    for kk in ks:
        if not isinstance(kk, (int, np.integer)) or isinstance(kk, bool) or kk < 1:
            raise InputError(f"explained_variance: k must be a positive integer, got {kk!r}")
    cumulative = np.cumsum(lam)
    total = float(cumulative[-1])
    out = {
        int(kk): (
            math.nan if total == 0.0 else float(cumulative[min(int(kk), len(lam)) - 1] / total)
        )
        for kk in ks
    }
    return out[int(k)] if isinstance(k, (int, np.integer)) else out


def _std_l2(z: torch.Tensor) -> float:
    """Mean per-dimension (unbiased) std of the L2-normalised rows of a validated tensor."""
    n, d = z.shape
    total = torch.zeros(d, dtype=torch.float64, device=z.device)
    for u in _float64_blocks(z, True):
        total += u.sum(dim=0)
    mean = total / n
    sq = torch.zeros(d, dtype=torch.float64, device=z.device)
    for u in _float64_blocks(z, True):
        sq += (u - mean).square().sum(dim=0)
    return float((sq / (n - 1)).sqrt().mean())


def std_of_l2_normalized(z: Any) -> float:
    """Mean over dimensions of the per-dimension std of the row-L2-normalised embeddings.

    ``mean_j std_i(z_ij / ||z_i||)`` with the unbiased (``N-1``) std, as in lightly's
    ``std_of_l2_normalized`` (SimSiam, Chen & He, CVPR 2021, use it to detect collapse).

    Known values: about ``1/sqrt(D)`` for healthy (isotropic Gaussian) embeddings, 0 when every
    row points the same way (complete collapse).

    Raises:
        InputError: see :func:`as_embeddings`.
    """
    return _std_l2(as_embeddings(z))


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class SpectrumResult:
    """Collapse diagnostics of one ``(N, D)`` embedding matrix.

    Field names are the names of :mod:`collapsekit.glossary` (and the keys of :meth:`to_dict`).

    Attributes:
        name: label of the embeddings (file, checkpoint, ``random:resnet18``).
        n: number of samples ``N`` (every rank below is measured on these ``N`` rows).
        d: embedding dimension ``D``.
        normalized: whether rows were L2-normalised before everything below (except ``std_l2``,
            which always normalises).
        spectrum: ``(D,)`` float64 covariance singular values (= eigenvalues λ), descending.
        effective_rank_sigma: effective rank of the singular values σ of the centred matrix
            ``Z - 1 zbarᵀ`` (``σ = sqrt((N-1) λ)``).
        rankme: effective rank of the singular values of the raw (normalised) matrix ``Z``, the
            RankMe form of Garrido et al. (2023).
        effective_rank_lambda: effective rank of the covariance eigenvalues ``λ = σ²/(N−1)``
            (the variance spectrum, the quantity plotted by Jing et al. 2022). It shows collapse far
            more clearly than effective rank (σ): for ``λ_i ∝ i^{-1.5}`` over 64 dimensions it is
            10.8 on λ against 42.9 on σ = √λ.
        alpha: power-law exponent (alpha-ReQ) fitted on ``spectrum[:numerical_rank]``; NaN when
            fewer than 2 values are available.
        alpha_r2: R² of that fit (NaN likewise).
        std_l2: :func:`std_of_l2_normalized` (``≈ 1/sqrt(D)`` healthy, 0 collapsed).
        top1_variance: fraction of the variance along the first direction.
        top10_variance: fraction of the variance in the first 10 directions.
        numerical_rank: number of singular values of the centred matrix above
            ``rank_tolerance * sigma_max`` (and above float64 rounding of the data, see
            :func:`summarize_spectrum`), at most ``rank_bound``.
        rank_tolerance: that relative tolerance (on singular values, not eigenvalues).
        rank_bound: ``min(D, N-1)``, the largest rank a centred ``N x D`` matrix can have; when
            ``N - 1 < D`` the rank is bounded by the sample count, not by the embeddings.
        pooling: how the rows were made from a model output (the rule of
            :func:`~collapsekit.diagnostics.pooling.pool_features`, e.g. ``"as is (B, 512)"``);
            empty when the rows were given as they are.
    """

    name: str
    n: int
    d: int
    normalized: bool
    spectrum: np.ndarray
    effective_rank_sigma: float
    rankme: float
    effective_rank_lambda: float
    alpha: float
    alpha_r2: float
    std_l2: float
    top1_variance: float
    top10_variance: float
    numerical_rank: int
    rank_tolerance: float
    rank_bound: int
    pooling: str = ""

    @property
    def bounded_by_samples(self) -> bool:
        """True when ``N - 1 < D``: no rank above ``N - 1`` is possible, whatever the model."""
        return self.n - 1 < self.d

    @property
    def measured_on(self) -> str:
        """The set and normalisation every rank of this result was measured on, e.g.
        ``"N=2048 rows, L2-normalised"``."""
        return f"N={self.n} rows, {'L2-normalised' if self.normalized else 'not normalised'}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpectrumResult:
        """Rebuild a result from :meth:`to_dict` output (e.g. a saved ``spectrum.json``); JSON
        written by earlier versions (``effective_rank_centered``, ``alpha_req``, …) loads too."""
        return spectrum_result_from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict whose keys are the field names (NaN becomes ``None``), plus
        ``bounded_by_samples`` and ``definitions`` (each quantity's formula from the glossary)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "spectrum":
                v = [float(x) for x in v]
            elif isinstance(v, float):
                v = _finite_or_none(v)
            out[f.name] = v
        out["bounded_by_samples"] = self.bounded_by_samples
        out["definitions"] = {k: lookup(k).formula for k in _QUANTITY_FIELDS}
        return out


_QUANTITY_FIELDS = (
    "effective_rank_sigma",
    "rankme",
    "effective_rank_lambda",
    "alpha",
    "alpha_r2",
    "std_l2",
    "top1_variance",
    "top10_variance",
    "numerical_rank",
    "rank_bound",
)
# keys of spectrum JSON written before the glossary that are not quantities (quantities are mapped
# by collapsekit.glossary.canonical_key)
_LEGACY_FIELDS = {
    "rows_l2_normalized": "normalized",
    "covariance_singular_values": "spectrum",
    "numerical_rank_rtol": "rank_tolerance",
}


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def spectrum_result_from_dict(d: dict[str, Any]) -> SpectrumResult:
    """Inverse of :meth:`SpectrumResult.to_dict` (``None`` back to NaN; legacy keys mapped)."""
    d = {_LEGACY_FIELDS.get(k, canonical_key(k)): v for k, v in d.items()}
    spectrum = np.asarray(d["spectrum"], dtype=np.float64)
    return SpectrumResult(
        name=d["name"],
        n=int(d["n"]),
        d=int(d["d"]),
        normalized=bool(d["normalized"]),
        spectrum=spectrum,
        effective_rank_sigma=_nan(d["effective_rank_sigma"]),
        rankme=_nan(d["rankme"]),
        # results saved before effective rank (λ) existed: recompute it from the stored spectrum
        effective_rank_lambda=_nan(d["effective_rank_lambda"])
        if "effective_rank_lambda" in d
        else effective_rank(np.clip(spectrum, 0, None)),
        alpha=_nan(d["alpha"]),
        alpha_r2=_nan(d["alpha_r2"]),
        std_l2=_nan(d["std_l2"]),
        top1_variance=_nan(d["top1_variance"]),
        top10_variance=_nan(d["top10_variance"]),
        numerical_rank=int(d["numerical_rank"]),
        rank_tolerance=float(d["rank_tolerance"]),
        rank_bound=int(d["rank_bound"]),
        pooling=str(d.get("pooling", "")),
    )


def summarize_spectrum(
    cov_eigenvalues: Any,
    raw_eigenvalues: Any,
    *,
    name: str,
    n: int,
    normalized: bool,
    std_l2: float,
    rtol: float | None = None,
    data_eps: float = _EPS64,
) -> SpectrumResult:
    """Build a :class:`SpectrumResult` from the two spectra of an ``(N, D)`` matrix.

    Args:
        cov_eigenvalues: ``(D,)`` eigenvalues of the covariance ``C``.
        raw_eigenvalues: ``(D,)`` eigenvalues of the raw ``ZᵀZ`` (for the uncentred rank).
        name: label.
        n: number of samples.
        normalized: whether rows were L2-normalised.
        std_l2: precomputed :func:`std_of_l2_normalized`.
        rtol: numerical-rank tolerance on singular values; default ``D * eps(float32)`` (see
            :func:`~collapsekit.diagnostics.rank.numerical_rank`).
        data_eps: the machine epsilon of the data's own precision (``eps(float32)`` for float32
            embeddings, the default ``eps(float64)`` for float64 ones).

    Centred singular values below ``data_eps * ||Z||_F`` are rounding noise of the data: rounding
    every entry of ``Z`` by at most ``eps/2`` relative moves its singular values by at most
    ``||E||_2 <= ||E||_F <= eps/2 * ||Z||_F``. They count as zero in the effective rank,
    numerical rank, alpha and variance fractions (e.g. when every row points the same way);
    ``spectrum`` keeps the values as computed. At float64's epsilon, the float32 rounding of a
    completely collapsed set reads as a spread spectrum (an effective rank (σ) of 24.9 of 32 for
    rows equal up to float32 rounding); at the data's own it reads as no spread at all.
    """
    cov = np.sort(as_spectrum(cov_eigenvalues, name="covariance eigenvalues"))[::-1]
    raw = as_spectrum(raw_eigenvalues, name="raw eigenvalues")
    d = len(cov)
    sigma = np.sqrt((n - 1) * cov)  # singular values of the centred matrix
    # Below the data's own rounding (eps * ||Z||_F, see above), a value is noise: it counts as zero
    # in the ranks and fractions.
    floor = float(data_eps) * float(np.sqrt(raw.sum()))
    signal = sigma > floor
    sigma_eff = np.where(signal, sigma, 0.0)
    cov_eff = np.where(signal, cov, 0.0)
    tol = d * _EPS32 if rtol is None else float(rtol)
    bound = min(d, n - 1)
    rank = min(numerical_rank(sigma_eff, rtol=tol), bound)
    try:
        alpha, r2 = alpha_req(cov_eff, fit_range=(0, rank)) if rank >= 2 else (math.nan, math.nan)
    except InputError:
        alpha, r2 = math.nan, math.nan
    top = explained_variance(cov_eff, [1, 10])
    assert isinstance(top, dict)
    return SpectrumResult(
        name=name,
        n=int(n),
        d=d,
        normalized=bool(normalized),
        spectrum=cov,
        effective_rank_sigma=effective_rank(sigma_eff),
        rankme=effective_rank(np.sqrt(raw)),
        effective_rank_lambda=effective_rank(cov_eff),
        alpha=alpha,
        alpha_r2=r2,
        std_l2=float(std_l2),
        top1_variance=top[1],
        top10_variance=top[10],
        numerical_rank=rank,
        rank_tolerance=tol,
        rank_bound=bound,
    )


def spectrum_report(
    z: Any, *, name: str = "embeddings", normalize: bool = True, drop_nonfinite: bool = False
) -> SpectrumResult:
    """All spectrum diagnostics of an in-memory ``(N, D)`` matrix in one call.

    Exact two-pass centring in float64 over row blocks, so a memory-mapped ``.npy`` needs one
    block plus ``O(D^2)`` of extra memory. For unbounded ``N`` use
    :class:`~collapsekit.diagnostics.streaming.SpectrumAccumulator` (same numbers).

    Args:
        z: ``(N, D)`` embeddings, numpy (memory-mapped is fine) or torch on any device.
        name: label used in the result and in error messages.
        normalize: L2-normalise rows before the spectrum and ranks.
        drop_nonfinite: drop rows with NaN/inf instead of raising.

    Raises:
        InputError: see :func:`as_embeddings`.
    """
    t = as_embeddings(z, name=name, drop_nonfinite=drop_nonfinite)
    cov, raw = _spectra(t, normalize, uncentered=True)
    assert raw is not None
    return summarize_spectrum(
        cov.cpu(),
        raw.cpu(),
        name=name,
        n=t.shape[0],
        normalized=normalize,
        std_l2=_std_l2(t),
        data_eps=data_precision(t.dtype),
    )


def data_precision(dtype: torch.dtype) -> float:
    """Machine epsilon of embeddings of ``dtype``: the relative rounding they already carry
    (``eps(float64)`` for integers, whose values are exact)."""
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else _EPS64
