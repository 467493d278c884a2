"""singular_spectrum, alpha_req, explained_variance, std_of_l2_normalized, spectrum_report."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from collapsekit.diagnostics import (
    alpha_req,
    effective_rank,
    explained_variance,
    singular_spectrum,
    spectrum_report,
    std_of_l2_normalized,
)
from collapsekit.diagnostics.spectrum import SpectrumResult
from collapsekit.errors import InputError
from collapsekit.glossary import lookup


def _decaying(n: int, d: int, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) / np.arange(1, d + 1)) @ q.T + offset


def _normalize(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _top_half_rel_error(s: np.ndarray, ref: np.ndarray) -> float:
    half = len(ref) // 2
    return float(np.max(np.abs(s[:half] - ref[:half]) / ref[:half]))


def test_spectrum_equals_numpy_svd_of_cov() -> None:
    z = _decaying(500, 40, offset=3.0).astype(np.float32)
    ref = np.linalg.svd(np.cov(z.T.astype(np.float64)), compute_uv=False)
    s = singular_spectrum(z, normalize=False)
    assert s.dtype == torch.float64 and s.shape == (40,)
    assert _top_half_rel_error(s.numpy(), ref) < 1e-5
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-9)  # in fact float64-exact throughout


def test_normalized_spectrum_equals_numpy_on_normalized_rows() -> None:
    z = _decaying(300, 16, seed=3, offset=0.5)
    ref = np.linalg.svd(np.cov(_normalize(z).T), compute_uv=False)
    np.testing.assert_allclose(singular_spectrum(torch.tensor(z)).numpy(), ref, rtol=1e-9)


def test_spectrum_with_more_dims_than_samples() -> None:
    rng = np.random.default_rng(4)
    z = rng.standard_normal((20, 50))
    ref = np.linalg.svd(np.cov(z.T), compute_uv=False)
    s = singular_spectrum(z, normalize=False).numpy()
    assert s.shape == (50,)
    np.testing.assert_allclose(s[:19], ref[:19], rtol=1e-9)
    assert np.all(s[19:] == 0.0)  # the centred 20 x 50 matrix has rank 19


def test_report_for_d_greater_than_n_is_bounded_by_samples() -> None:
    z = np.random.default_rng(5).standard_normal((20, 50))
    res = spectrum_report(z, normalize=False)
    assert res.rank_bound == 19 and res.numerical_rank == 19 and res.bounded_by_samples
    d = res.to_dict()
    assert d["rank_bound"] == 19 and d["bounded_by_samples"] is True


def test_isotropic_gaussian_has_effective_rank_close_to_d() -> None:
    z = np.random.default_rng(6).standard_normal((20000, 32))
    res = spectrum_report(z)
    assert 0.95 * 32 < res.effective_rank_sigma <= 32
    assert res.numerical_rank == 32
    assert res.top1_variance == pytest.approx(1 / 32, rel=0.1)
    assert res.std_l2 == pytest.approx(1 / math.sqrt(32), rel=0.02)
    assert abs(res.alpha) < 0.1


def test_report_ranks_equal_effective_rank_of_svd() -> None:
    z = _decaying(400, 24, seed=7, offset=2.0)
    res = spectrum_report(z)
    zn = _normalize(z)
    centred = np.linalg.svd(zn - zn.mean(0), compute_uv=False)
    raw = np.linalg.svd(zn, compute_uv=False)
    assert res.effective_rank_sigma == pytest.approx(effective_rank(centred), rel=1e-8)
    assert res.rankme == pytest.approx(effective_rank(raw), rel=1e-8)
    # the mean offset takes one large singular value of the raw matrix: RankMe (uncentred) is lower
    assert res.rankme < res.effective_rank_sigma - 1


def test_rank_one_embeddings() -> None:
    rng = np.random.default_rng(8)
    z = np.outer(rng.standard_normal(100), rng.standard_normal(32))
    res = spectrum_report(z, normalize=False)
    assert res.effective_rank_sigma == pytest.approx(1.0, abs=1e-4)  # float64 rounding tail
    assert res.numerical_rank == 1
    assert res.top1_variance == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(res.alpha) and res.to_dict()["alpha"] is None


def test_collapsed_to_a_point() -> None:
    z = np.tile(np.arange(1.0, 9.0), (50, 1))
    res = spectrum_report(z)
    assert res.numerical_rank == 0 and res.effective_rank_sigma == 0.0
    assert math.isnan(res.top1_variance) and math.isnan(res.alpha)
    assert res.std_l2 == pytest.approx(0.0, abs=1e-12)
    assert res.rankme == pytest.approx(1.0, abs=1e-6)
    json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_alpha_req_recovers_power_law(alpha: float) -> None:
    lam = 7.0 * np.arange(1, 201, dtype=np.float64) ** -alpha
    a, r2 = alpha_req(np.random.default_rng(0).permutation(lam))  # order does not matter
    assert a == pytest.approx(alpha, abs=1e-10)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_alpha_req_fit_range_and_noise() -> None:
    i = np.arange(1, 101, dtype=np.float64)
    lam = np.where(i <= 50, i**-1.0, 1e-3 * i**-4.0)  # a break after 50
    assert alpha_req(lam, fit_range=(0, 50))[0] == pytest.approx(1.0, abs=1e-10)
    assert alpha_req(lam, fit_range=(50, 100))[0] == pytest.approx(4.0, abs=1e-10)
    noisy = i**-1.5 * np.exp(np.random.default_rng(1).normal(0, 0.05, 100))
    a, r2 = alpha_req(noisy)
    assert a == pytest.approx(1.5, abs=0.05) and 0.98 < r2 < 1.0
    assert alpha_req(np.ones(10)) == (pytest.approx(0.0, abs=1e-12), 1.0)


def test_alpha_req_errors() -> None:
    with pytest.raises(InputError, match="at least 2 positive"):
        alpha_req([1.0, 0.0, 0.0])
    with pytest.raises(InputError, match="fit_range"):
        alpha_req([1.0, 0.5], fit_range=(1, 5))


def test_explained_variance() -> None:
    lam = [1.0, 4.0, 2.0, 3.0]
    assert explained_variance(lam, 1) == pytest.approx(0.4)
    assert explained_variance(lam, [1, 2, 10]) == {
        1: pytest.approx(0.4),
        2: pytest.approx(0.7),
        10: pytest.approx(1.0),
    }
    assert explained_variance(np.ones(64), 10) == pytest.approx(10 / 64)
    assert math.isnan(explained_variance(np.zeros(3), 1))
    with pytest.raises(InputError, match="positive integer"):
        explained_variance(lam, 0)


def test_std_of_l2_normalized_matches_numpy() -> None:
    z = _decaying(300, 12, seed=9, offset=1.0)
    expected = np.std(_normalize(z), axis=0, ddof=1).mean()
    assert std_of_l2_normalized(z) == pytest.approx(expected, rel=1e-12)
    assert std_of_l2_normalized(np.ones((10, 4))) == 0.0


def test_report_drop_nonfinite_and_errors() -> None:
    z = _decaying(100, 8)
    bad = z.copy()
    bad[[3, 50]] = np.nan
    with pytest.raises(InputError, match="2 of 100 rows"):
        spectrum_report(bad)
    res = spectrum_report(bad, drop_nonfinite=True)
    ref = spectrum_report(np.delete(z, [3, 50], axis=0))
    assert res.n == 98
    np.testing.assert_allclose(res.spectrum, ref.spectrum, rtol=1e-12)


def test_to_dict_is_json_ready_keys_are_the_field_names() -> None:
    res = spectrum_report(_decaying(200, 10), name="model.pt")
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    fields = [f.name for f in dataclasses.fields(res)]
    assert list(d)[: len(fields)] == fields
    assert set(d) - set(fields) == {"bounded_by_samples", "definitions"}
    assert d["name"] == "model.pt" and d["n"] == 200 and d["d"] == 10
    assert d["spectrum"] == pytest.approx(res.spectrum.tolist())
    assert d["rank_tolerance"] == pytest.approx(10 * np.finfo(np.float32).eps)
    assert "centred" in d["definitions"]["effective_rank_sigma"]
    assert d["definitions"]["rankme"] == lookup("rankme").formula
    back = SpectrumResult.from_dict(d)
    assert back.effective_rank_lambda == res.effective_rank_lambda and back.rankme == res.rankme


def test_json_written_by_earlier_versions_still_loads() -> None:
    res = spectrum_report(_decaying(200, 10), name="old")
    legacy = {  # the spectrum.json keys before the glossary
        "name": "old",
        "n": 200,
        "d": 10,
        "rows_l2_normalized": True,
        "covariance_singular_values": res.spectrum.tolist(),
        "effective_rank_centered": res.effective_rank_sigma,
        "effective_rank_uncentered": res.rankme,
        "effective_rank_eigenvalues": res.effective_rank_lambda,
        "alpha_req": res.alpha,
        "alpha_req_r2": res.alpha_r2,
        "std_of_l2_normalized": res.std_l2,
        "std_of_l2_normalized_isotropic": 10**-0.5,
        "top1_variance_fraction": res.top1_variance,
        "top10_variance_fraction": res.top10_variance,
        "numerical_rank": res.numerical_rank,
        "numerical_rank_rtol": res.rank_tolerance,
        "rank_bound": res.rank_bound,
        "rank_bounded_by_samples": False,
        "definitions": {},
    }
    old = SpectrumResult.from_dict(legacy)
    assert old.to_dict() == res.to_dict()


def test_eigenvalue_effective_rank_is_the_variance_spectrum() -> None:
    z = _decaying(400, 24, seed=3, offset=1.0)
    res = spectrum_report(z)
    zn = _normalize(z)
    lam = np.linalg.eigvalsh(np.cov(zn.T))
    assert res.effective_rank_lambda == pytest.approx(effective_rank(lam.clip(0)), rel=1e-8)
    # λ = σ²: the λ-based rank is always the lower one (squaring sharpens the distribution)
    assert res.effective_rank_lambda < res.effective_rank_sigma
    # the known value of the docstring: λ_i ∝ i^-1.5 over 64 dimensions
    lam = np.arange(1, 65.0) ** -1.5
    assert effective_rank(lam) == pytest.approx(10.82, abs=0.01)
    assert effective_rank(np.sqrt(lam)) == pytest.approx(42.89, abs=0.01)
    # saved results without the field get it back from their spectrum
    d = res.to_dict()
    del d["effective_rank_lambda"]
    old = type(res).from_dict(d)
    assert old.effective_rank_lambda == pytest.approx(res.effective_rank_lambda, rel=1e-6)


def test_float32_rounding_of_a_collapsed_set_is_not_read_as_spread() -> None:
    """Rows that all point one way, equal up to float32 rounding: the centred spectrum is pure
    rounding noise, which at float64's epsilon would read as a high rank (an effective rank (σ)
    of 24.9 of 32)."""
    from collapsekit.diagnostics import spectrum_report
    from collapsekit.diagnostics.streaming import SpectrumAccumulator

    rng = np.random.default_rng(0)
    direction = rng.normal(size=32)
    z = (direction[None, :] * rng.uniform(0.5, 2.0, size=(512, 1))).astype(np.float32)
    res = spectrum_report(z)
    assert res.effective_rank_sigma == 0.0 and res.effective_rank_lambda == 0.0
    assert res.numerical_rank == 0
    assert res.rankme == pytest.approx(1.0, abs=1e-3)  # RankMe agrees
    acc = SpectrumAccumulator()
    for block in np.array_split(z, 4):
        acc.update(block)
    assert acc.compute().effective_rank_lambda == 0.0
    # Cast to float64, the float32 rounding is taken for signal: the dtype says the precision.
    assert spectrum_report(z.astype(np.float64)).numerical_rank > 1
    # A healthy isotropic float32 set keeps its full rank.
    iso = rng.normal(size=(4096, 32)).astype(np.float32)
    assert spectrum_report(iso).effective_rank_lambda > 31.0
