"""The vocabulary: one name per quantity, legacy keys mapped."""

from __future__ import annotations

import pytest

from collapsekit.glossary import QUANTITIES, canonical_key, label, lookup


def test_names_are_unique() -> None:
    names = [q.name for q in QUANTITIES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("effective_rank", "effective_rank_sigma"),
        ("effective_rank_centered", "effective_rank_sigma"),
        ("effective_rank_eigenvalues", "effective_rank_lambda"),
        ("effective_rank_uncentered", "rankme"),
        ("cosine_mean", "mean_cosine"),
        ("proj_effective_rank_eigenvalues", "projector/effective_rank_lambda"),
        ("proj_mean_cosine", "projector/mean_cosine"),
        ("dense_effective_rank", "dense/effective_rank_sigma"),
        ("backbone/effective_rank_lambda", "backbone/effective_rank_lambda"),
        ("not_a_quantity", "not_a_quantity"),
    ],
)
def test_canonical_key(old: str, new: str) -> None:
    assert canonical_key(old) == new


def test_label_and_lookup() -> None:
    assert label("proj_effective_rank_eigenvalues") == "projector effective rank (λ)"
    assert label("effective_rank_sigma") == "effective rank (σ)"
    assert lookup("dense/effective_rank_eigenvalues").name == "effective_rank_lambda"
    with pytest.raises(KeyError):
        lookup("nope")
