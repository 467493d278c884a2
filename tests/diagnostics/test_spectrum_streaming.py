"""SpectrumAccumulator: streaming equals one-shot, the shift survives large offsets, bad batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from collapsekit.diagnostics import (
    SpectrumAccumulator,
    spectrum_report,
    std_of_l2_normalized,
    streaming,
)
from collapsekit.diagnostics.spectrum import SpectrumResult
from collapsekit.errors import InputError

SCALARS = (
    "n",
    "d",
    "normalized",
    "effective_rank_sigma",
    "rankme",
    "alpha",
    "alpha_r2",
    "std_l2",
    "top1_variance",
    "top10_variance",
    "numerical_rank",
    "rank_tolerance",
    "rank_bound",
)


def _decaying(n: int, d: int, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) / np.arange(1, d + 1)) @ q.T + offset


def _stream(z, sizes: list[int], **kwargs) -> SpectrumResult:
    assert sum(sizes) == len(z)
    acc = SpectrumAccumulator(**kwargs)
    start = 0
    for size in sizes:
        acc.update(z[start : start + size])
        start += size
    assert acc.n == len(z)
    return acc.compute()


def _assert_same(a: SpectrumResult, b: SpectrumResult, rtol: float) -> None:
    keep = b.spectrum > 1e-10 * b.spectrum[0]
    np.testing.assert_allclose(a.spectrum[keep], b.spectrum[keep], rtol=rtol)
    for key in SCALARS:
        va, vb = getattr(a, key), getattr(b, key)
        if isinstance(va, float):
            assert va == pytest.approx(vb, rel=rtol, abs=1e-12), key
        else:
            assert va == vb, key


# 1000 rows in uneven chunks, with single rows first and in the middle.
SIZES = [1, 7, 300, 1, 64, 627]


@pytest.mark.parametrize("normalize", [True, False])
def test_streaming_equals_one_shot(normalize: bool) -> None:
    z = _decaying(1000, 48, offset=0.7)
    one_shot = spectrum_report(z, normalize=normalize)
    _assert_same(_stream(z, SIZES, normalize=normalize), one_shot, rtol=1e-9)


def test_shift_keeps_float32_data_with_large_offset_exact() -> None:
    # mean 1e4, spread about 1 (tail 1/48): an unshifted float32 sum of squares loses it all.
    z = (_decaying(1000, 48, seed=1) + 1e4).astype(np.float32)
    ref = np.linalg.svd(np.cov(z.T.astype(np.float64)), compute_uv=False)
    res = _stream(z, SIZES, normalize=False)
    np.testing.assert_allclose(res.spectrum, ref, rtol=1e-8)
    assert res.numerical_rank == 48
    _assert_same(res, spectrum_report(z, normalize=False), rtol=1e-8)


def test_std_l2_without_normalize_uses_normalized_rows() -> None:
    z = _decaying(500, 16, seed=2, offset=3.0)
    res = _stream(z, [250, 1, 249], normalize=False)
    assert res.std_l2 == pytest.approx(std_of_l2_normalized(z), rel=1e-9)


def test_torch_and_numpy_batches_mix() -> None:
    z = _decaying(200, 12, seed=3)
    acc = SpectrumAccumulator(12)
    acc.update(torch.tensor(z[:50], dtype=torch.float64))
    acc.update(z[50:120])
    acc.update(torch.tensor(z[120:]))
    _assert_same(acc.compute(), spectrum_report(z), rtol=1e-9)


def test_more_dims_than_samples() -> None:
    z = np.random.default_rng(4).standard_normal((10, 30))
    res = _stream(z, [3, 7], normalize=False)
    assert res.rank_bound == 9 and res.numerical_rank == 9 and res.bounded_by_samples
    np.testing.assert_allclose(
        res.spectrum[:9], np.linalg.svd(np.cov(z.T), compute_uv=False)[:9], rtol=1e-9
    )


@pytest.mark.parametrize("block", [7, 16, 512])
def test_blocked_gram_update_covers_every_block(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    # D = 40 with column blocks of 7 (ragged last block), 16 and one block: same spectrum.
    monkeypatch.setattr(streaming, "_GRAM_BLOCK", block)
    z = np.random.default_rng(5).standard_normal((60, 40)).astype(np.float32)
    res = _stream(z, [16, 1, 43], normalize=False)
    ref = np.linalg.svd(np.cov(z.T.astype(np.float64)), compute_uv=False)
    np.testing.assert_allclose(res.spectrum, ref, rtol=1e-8)


def test_fast_mode_is_close_at_the_top() -> None:
    z = _decaying(1000, 48, seed=6, offset=2.0).astype(np.float32)
    fast = _stream(z, SIZES, normalize=False, fast=True)
    exact = spectrum_report(z, normalize=False)
    np.testing.assert_allclose(fast.spectrum[:10], exact.spectrum[:10], rtol=1e-4)
    assert fast.effective_rank_sigma == pytest.approx(exact.effective_rank_sigma, rel=1e-3)


def test_nonfinite_batches() -> None:
    acc = SpectrumAccumulator(4, name="stream")
    acc.update(np.ones((3, 4)))
    bad = np.arange(20.0).reshape(5, 4)
    bad[1, 2] = np.nan
    with pytest.raises(InputError, match="stream: 1 rows of the batch starting at row 3"):
        acc.update(bad)
    dropping = SpectrumAccumulator(4, drop_nonfinite=True)
    dropping.update(bad)
    assert dropping.n == 4 and dropping.n_dropped == 1


def test_bad_batches_and_too_few_rows() -> None:
    acc = SpectrumAccumulator(name="stream")
    acc.update(np.zeros((0, 6)))  # empty batches are ignored
    acc.update(np.ones((1, 6)))
    with pytest.raises(InputError, match=r"expected batches of shape \(b, 6\), got \(2, 5\)"):
        acc.update(np.ones((2, 5)))
    with pytest.raises(InputError, match=r"got shape \(2, 3, 2\)"):
        acc.update(np.ones((2, 3, 2)))
    with pytest.raises(InputError, match="at least 2 embeddings"):
        acc.compute()
    with pytest.raises(InputError, match="dim must be a positive integer"):
        SpectrumAccumulator(0)


def test_collapsed_stream() -> None:
    res = _stream(np.tile([1.0, 2.0, 3.0], (30, 1)), [10, 20])
    assert res.numerical_rank == 0 and res.effective_rank_sigma == 0.0
    assert math.isnan(res.alpha)
