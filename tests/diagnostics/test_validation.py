"""as_embeddings / as_matrix / nonfinite_rows: shapes, dtypes, NaN handling, no needless copies."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from collapsekit.diagnostics import as_embeddings
from collapsekit.diagnostics.validation import as_matrix, l2_normalize_rows, nonfinite_rows
from collapsekit.errors import InputError


@pytest.mark.parametrize(
    ("shape", "text"),
    [
        ((3, 4, 5), "expected (N, D) embeddings, got shape (3, 4, 5)"),
        ((7,), "expected (N, D) embeddings, got shape (7,)"),
        ((5, 0), "D >= 1, got shape (5, 0)"),
        ((1, 4), "at least 2 embeddings (rows), got shape (1, 4)"),
        ((0, 4), "at least 2 embeddings (rows), got shape (0, 4)"),
    ],
)
def test_bad_shapes_name_what_arrived(shape: tuple[int, ...], text: str) -> None:
    with pytest.raises(InputError) as err:
        as_embeddings(np.zeros(shape), name="emb.npy")
    message = str(err.value)
    assert message.startswith("emb.npy: ") and text in message and "\n" not in message


def test_object_complex_and_string_arrays_are_refused() -> None:
    with pytest.raises(InputError, match="object array of shape \\(2, 2\\)"):
        as_embeddings(np.array([[1, "a"], [2, None]], dtype=object))
    with pytest.raises(InputError, match="complex"):
        as_embeddings(np.ones((3, 2), dtype=np.complex64))
    with pytest.raises(InputError, match="complex"):
        as_embeddings(torch.ones(3, 2, dtype=torch.complex64))
    with pytest.raises(InputError, match="numeric"):
        as_embeddings(np.array([["a", "b"], ["c", "d"]]))


def test_dtypes_are_converted_exactly() -> None:
    ints = np.array([[1, 2**40], [3, -4]], dtype=np.int64)
    out = as_embeddings(ints)
    assert out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), ints.astype(np.float64))
    half = torch.tensor([[0.5, 1.5], [2.0, -1.0]], dtype=torch.float16)
    assert as_embeddings(half).dtype == torch.float32
    assert as_embeddings(half.to(torch.bfloat16)).dtype == torch.float32
    assert as_embeddings([[1.0, 2.0], [3.0, 4.0]]).dtype == torch.float64


def test_float_inputs_are_not_copied() -> None:
    z = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    out = as_embeddings(z)
    assert out.dtype == torch.float32 and np.shares_memory(out.numpy(), z)
    t = torch.randn(4, 3, dtype=torch.float64)
    assert as_embeddings(t).data_ptr() == t.data_ptr()


def test_read_only_memmap_is_accepted_without_warning(tmp_path) -> None:
    path = tmp_path / "z.npy"
    np.save(path, np.arange(12, dtype=np.float32).reshape(4, 3))
    mm = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = as_embeddings(mm)
    np.testing.assert_array_equal(out.numpy(), np.arange(12).reshape(4, 3))


def test_nonfinite_rows_raise_with_count_and_hint() -> None:
    z = np.ones((10, 3))
    z[2, 1] = np.nan
    z[7, 0] = -np.inf
    with pytest.raises(InputError) as err:
        as_embeddings(z, name="emb")
    assert "2 of 10 rows contain NaN or inf" in str(err.value)
    assert "--drop-nonfinite" in str(err.value)


def test_drop_nonfinite_keeps_the_finite_rows_in_order() -> None:
    z = np.arange(30, dtype=np.float64).reshape(10, 3)
    z[2, 1] = np.nan
    z[7, 0] = np.inf
    out = as_embeddings(z, drop_nonfinite=True)
    np.testing.assert_array_equal(out.numpy(), np.delete(z, [2, 7], axis=0))


def test_drop_nonfinite_still_needs_two_rows() -> None:
    z = np.full((3, 2), np.nan)
    z[0] = 1.0
    with pytest.raises(InputError, match="only 1 of 3 rows are finite"):
        as_embeddings(z, drop_nonfinite=True)


def test_nonfinite_rows_exact_even_when_the_row_sum_overflows() -> None:
    z = torch.tensor(
        [[1e308, 1e308], [1.0, 2.0], [np.inf, -np.inf], [np.nan, 0.0], [-1e308, -1e308]],
        dtype=torch.float64,
    )
    assert nonfinite_rows(z).tolist() == [False, False, True, True, False]
    big = torch.ones(20000, 4)
    big[12345, 2] = np.nan
    assert torch.nonzero(nonfinite_rows(big)).ravel().tolist() == [12345]


def test_as_matrix_allows_single_row_batches() -> None:
    assert as_matrix(np.ones((1, 5)), min_rows=1).shape == (1, 5)


def test_l2_normalize_rows_unit_norm_and_zero_row() -> None:
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize_rows(z)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert z[0, 0] == 3.0  # not in place by default


@pytest.mark.parametrize("tiny", [0.0, 1e-13])
def test_rows_too_small_to_normalise_are_refused(tiny: float) -> None:
    """A row of norm < 1e-12 would stay ~0 after the clamped division and read as collapsed
    (std_of_l2_normalized 1e-13) while the JSON says rows were normalised (issue 22, item 14)."""
    from collapsekit.diagnostics import SpectrumAccumulator, spectrum_report, std_of_l2_normalized

    rng = np.random.default_rng(0)
    z = rng.standard_normal((50, 8))
    z[[3, 7]] = tiny * np.eye(8)[0]
    with pytest.raises(InputError, match=r"2 of 50 rows have an L2 norm below 1e-12"):
        l2_normalize_rows(torch.from_numpy(z), strict=True)
    with pytest.raises(InputError, match="2 of 50 rows"):
        std_of_l2_normalized(z)
    for normalize in (True, False):  # std_of_l2_normalized is in every report
        with pytest.raises(InputError, match="cannot be L2-normalised"):
            spectrum_report(z, normalize=normalize)
        acc = SpectrumAccumulator(normalize=normalize)
        with pytest.raises(InputError, match="cannot be L2-normalised"):
            acc.update(z)
    # rows of norm 1e-6 are normalised exactly: the small scale is no reason to refuse
    small = rng.standard_normal((10, 8))
    small *= 1e-6 / np.linalg.norm(small, axis=1, keepdims=True)
    out = l2_normalize_rows(torch.from_numpy(small), strict=True).numpy()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-12)
