"""pairwise_cosine_stats against closed forms and a brute-force numpy reference."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from collapsekit.diagnostics import SimilarityResult, pairwise_cosine_stats
from collapsekit.errors import InputError


def _brute_force(z: np.ndarray) -> np.ndarray:
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    i, j = np.triu_indices(len(z), k=1)
    return np.einsum("pd,pd->p", u[i], u[j])


def test_identical_rows_give_one() -> None:
    res = pairwise_cosine_stats(np.tile([0.3, -1.0, 2.0], (12, 1)), bins=10)
    assert res.n_pairs == 66 and res.n_samples == 12
    assert res.mean_cosine == pytest.approx(1.0, abs=1e-12) and res.std_cosine == pytest.approx(
        0.0, abs=1e-7
    )
    assert all(v == pytest.approx(1.0, abs=1e-7) for v in res.quantiles.values())
    counts, edges = res.histogram
    assert counts.tolist() == [0] * 9 + [66]
    np.testing.assert_allclose(edges, np.linspace(-1, 1, 11))


def test_orthogonal_and_opposite_rows() -> None:
    res = pairwise_cosine_stats(np.eye(6))
    assert res.n_pairs == 15 and res.mean_cosine == 0.0 and res.std_cosine == 0.0
    opposite = pairwise_cosine_stats(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))
    assert opposite.n_pairs == 1 and opposite.mean_cosine == pytest.approx(-1.0, abs=1e-7)


def test_matches_brute_force_numpy() -> None:
    z = np.random.default_rng(0).standard_normal((50, 8)) + 0.5
    ref = _brute_force(z)
    res = pairwise_cosine_stats(z, bins=20)
    assert res.n_pairs == 1225
    assert res.mean_cosine == pytest.approx(ref.mean(), abs=1e-7)
    assert res.std_cosine == pytest.approx(ref.std(), abs=1e-7)
    expected_q = np.quantile(ref, [0.05, 0.25, 0.5, 0.75, 0.95])
    np.testing.assert_allclose(list(res.quantiles.values()), expected_q, atol=1e-6)
    assert list(res.quantiles) == ["q05", "q25", "q50", "q75", "q95"]
    np.testing.assert_array_equal(
        res.histogram[0], np.histogram(ref, bins=np.linspace(-1, 1, 21))[0]
    )


def test_same_and_different_volume_split_counts_and_means() -> None:
    z = np.random.default_rng(1).standard_normal((10, 5))
    groups = ["a", "a", "a", "b", "b", "b", "b", "b", "c", "c"]  # sizes 3, 5, 2
    res = pairwise_cosine_stats(z, groups=groups)
    assert res.same_volume is not None and res.different_volume is not None
    assert res.same_volume.n_pairs == 3 + 10 + 1
    assert res.different_volume.n_pairs == 45 - 14
    ref = _brute_force(z)
    i, j = np.triu_indices(10, k=1)
    same = np.asarray(groups)[i] == np.asarray(groups)[j]
    assert res.same_volume.mean_cosine == pytest.approx(ref[same].mean(), abs=1e-7)
    assert res.different_volume.mean_cosine == pytest.approx(ref[~same].mean(), abs=1e-7)
    assert res.same_volume.same_volume is None
    assert "same volume" in res.same_volume.name


def test_no_same_volume_pairs_gives_none() -> None:
    res = pairwise_cosine_stats(np.eye(4), groups=[0, 1, 2, 3])
    assert res.same_volume is None and res.different_volume is not None
    assert res.different_volume.n_pairs == 6


def test_subsampling_is_deterministic_and_keeps_groups_aligned() -> None:
    # every row of volume g is e_g: same-volume cosines are 1, different-volume 0, whatever rows
    # the subsample keeps, as long as groups follow their rows.
    groups = np.repeat(np.arange(6), 50)
    z = np.eye(6)[groups] * np.random.default_rng(2).uniform(0.5, 2.0, (300, 1))
    a = pairwise_cosine_stats(z, groups=groups, max_samples=40, seed=3)
    b = pairwise_cosine_stats(z, groups=groups, max_samples=40, seed=3)
    c = pairwise_cosine_stats(z, groups=groups, max_samples=40, seed=4)
    assert a.n_samples == 40 and a.n_pairs == 780
    assert a.to_dict() == b.to_dict()
    assert a.mean_cosine != c.mean_cosine
    assert a.same_volume is not None and a.different_volume is not None
    assert a.same_volume.mean_cosine == pytest.approx(1.0, abs=1e-12)
    assert a.different_volume.mean_cosine == 0.0
    assert a.same_volume.n_pairs + a.different_volume.n_pairs == 780


def test_zero_rows_have_cosine_zero() -> None:
    res = pairwise_cosine_stats(np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]))
    assert res.n_pairs == 3 and res.mean_cosine == pytest.approx(1 / 3)


def test_bad_arguments() -> None:
    z = np.ones((5, 3))
    with pytest.raises(InputError, match=r"one volume id per row \(5,\), got shape \(4,\)"):
        pairwise_cosine_stats(z, groups=[0, 1, 2, 3])
    with pytest.raises(InputError, match="bins"):
        pairwise_cosine_stats(z, bins=0)
    with pytest.raises(InputError, match="max_samples"):
        pairwise_cosine_stats(z, max_samples=1)
    with pytest.raises(InputError, match=r"got shape \(5,\)"):
        pairwise_cosine_stats(np.ones(5))


def test_to_dict_is_json_ready() -> None:
    res = pairwise_cosine_stats(
        np.random.default_rng(5).standard_normal((20, 4)), groups=[0, 1] * 10
    )
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["n_pairs"] == 190 and sum(d["histogram"]["counts"]) == 190
    assert d["same_volume"]["n_pairs"] == 90 and d["different_volume"]["n_pairs"] == 100
    assert (
        len(d["histogram"]["bin_edges"]) == 201
    )  # default 200 bins: 0.01 wide, CT cosines crowd into [0.8, 1]
    density = res.density()
    assert float(np.sum(density * np.diff(res.histogram[1]))) == pytest.approx(1.0)


def test_keys_are_the_field_names_and_old_json_loads() -> None:
    res = pairwise_cosine_stats(
        np.random.default_rng(5).standard_normal((20, 4)), groups=[0, 1] * 10
    )
    d = res.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(res)][:1] + [
        "n_samples",
        "n_pairs",
        "mean_cosine",
        "std_cosine",
        "quantiles",
        "histogram",
        "same_volume",
        "different_volume",
    ]
    assert {f.name for f in dataclasses.fields(res)} == set(d)
    assert SimilarityResult.from_dict(d).to_dict() == d
    old = dict(d, mean=d["mean_cosine"], std=d["std_cosine"])  # before the glossary
    del old["mean_cosine"], old["std_cosine"]
    back = SimilarityResult.from_dict(old)
    assert back.mean_cosine == res.mean_cosine and back.std_cosine == res.std_cosine
