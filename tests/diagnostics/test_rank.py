"""effective_rank and numerical_rank against closed forms and numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapsekit.diagnostics import effective_rank, numerical_rank
from collapsekit.errors import InputError


def test_effective_rank_of_rank_one_is_one() -> None:
    assert effective_rank([5.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(0)
    a = np.outer(rng.standard_normal(200), rng.standard_normal(64))
    s = np.linalg.svd(a, compute_uv=False)
    assert effective_rank(s) == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_of_flat_spectra() -> None:
    assert effective_rank(np.ones(128)) == pytest.approx(128.0, rel=1e-9)
    assert effective_rank(np.r_[np.full(7, 2.5), np.zeros(20)]) == pytest.approx(7.0, rel=1e-9)


def test_effective_rank_closed_form_and_scale_invariance() -> None:
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, exp(H) = 2 ** 1.5
    assert effective_rank([2.0, 1.0, 1.0]) == pytest.approx(2**1.5, rel=1e-9)
    s = np.array([3.0, 1.0, 0.5, 0.01])
    p = s / s.sum()
    expected = math.exp(-float(np.sum(p * np.log(p))))
    assert effective_rank(s) == pytest.approx(expected, rel=1e-9)
    assert effective_rank(1e6 * s) == pytest.approx(expected, rel=1e-9)
    assert effective_rank(torch.tensor(s)) == pytest.approx(expected, rel=1e-9)


def test_effective_rank_rankme_eps() -> None:
    # RankMe's eps=1e-7 on two zeros: p = (1 + e, e, e)
    e = 1e-7
    p = np.array([1 + e, e, e])
    assert effective_rank([1.0, 0.0, 0.0], eps=e) == pytest.approx(
        math.exp(-float(np.sum(p * np.log(p)))), rel=1e-12
    )


def test_effective_rank_of_zero_spectrum_is_zero() -> None:
    assert effective_rank(np.zeros(5)) == 0.0


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        ([1.0, -0.5], "nonnegative"),
        ([1.0, np.nan], "NaN or inf"),
        ([], "non-empty 1-D"),
        ([[1.0, 2.0]], "non-empty 1-D"),
    ],
)
def test_bad_spectra_raise(bad: list, text: str) -> None:
    with pytest.raises(InputError, match=text):
        effective_rank(bad)
    with pytest.raises(InputError, match=text):
        numerical_rank(bad)


def test_numerical_rank_of_rank_r_float32_matrix() -> None:
    rng = np.random.default_rng(1)
    for r in (1, 3, 7, 40):
        a = (rng.standard_normal((300, r)) @ rng.standard_normal((r, 40))).astype(np.float32)
        s = np.linalg.svd(a.astype(np.float64), compute_uv=False)
        assert numerical_rank(s) == r
        # float32 rounding puts the zero singular values near 1e-7 of the largest, above a
        # float64 tolerance: the float32 default is what makes the answer right.
        if r < 40:
            assert numerical_rank(s, rtol=1e-15) == 40


def test_numerical_rank_matches_numpy_matrix_rank_at_its_tolerance() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((50, 5)) @ rng.standard_normal((5, 30))
    s = np.linalg.svd(a, compute_uv=False)
    rtol = max(a.shape) * np.finfo(np.float64).eps
    assert numerical_rank(s, rtol=rtol) == np.linalg.matrix_rank(a) == 5


def test_numerical_rank_edge_cases() -> None:
    assert numerical_rank(np.zeros(4)) == 0
    assert numerical_rank([1.0, 0.5, 1e-3], rtol=1e-2) == 2
    with pytest.raises(InputError, match="rtol"):
        numerical_rank([1.0], rtol=-1.0)
