"""The health verdict: thresholds at their documented values."""

from __future__ import annotations

import math

import pytest

from collapsekit.diagnostics.health import Health, health_verdict
from collapsekit.errors import InputError


def test_collapsed_by_cosine_or_rank() -> None:
    assert health_verdict(mean_cosine=0.99999).health is Health.COLLAPSED
    assert health_verdict(effective_rank_lambda=1.09).health is Health.COLLAPSED
    # collapse wins over a low loss
    v = health_verdict(loss_global=0.1, queue_size=1024, mean_cosine=0.96)
    assert v.health is Health.COLLAPSED


def test_a_rank_near_one_that_still_discriminates_is_not_complete_collapse() -> None:
    # the projector of a default run at step 48 (docs/results/performance.md): rank 1.29,
    # cosine 0.83, in-batch top-1 4x chance
    v = health_verdict(
        loss_global=4.09,
        queue_size=96,
        top1_in_batch=0.125,
        batch_size=32,
        mean_cosine=0.83,
        effective_rank_lambda=1.29,
    )
    assert v.health is Health.HEALTHY
    assert "effective_rank_lambda 1.29 < 1.5: about one direction" in str(v)
    # the same rank with the top-1 at chance: collapsed; with no top-1 given: collapsed
    v = health_verdict(top1_in_batch=0.031, batch_size=32, effective_rank_lambda=1.29)
    assert v.health is Health.COLLAPSED
    assert health_verdict(effective_rank_lambda=1.29).health is Health.COLLAPSED
    # the cosine rule holds whatever the top-1
    v = health_verdict(top1_in_batch=0.5, batch_size=32, mean_cosine=0.97)
    assert v.health is Health.COLLAPSED


def test_not_learning_at_chance() -> None:
    k = 1024
    v = health_verdict(loss_global=0.91 * math.log(k + 1), queue_size=k)
    assert v.health is Health.NOT_LEARNING
    assert health_verdict(loss_global=0.89 * math.log(k + 1), queue_size=k).health is Health.HEALTHY
    # in-batch top-1 0.036 at B = 32 (chance 0.031): not learning
    v = health_verdict(top1_in_batch=0.036, batch_size=32)
    assert v.health is Health.NOT_LEARNING
    assert "top1_in_batch 0.036 < 2/B = 0.062" in str(v)
    assert health_verdict(top1_in_batch=0.07, batch_size=32).health is Health.HEALTHY


def test_unknown_and_errors() -> None:
    assert health_verdict().health is Health.UNKNOWN
    assert health_verdict(mean_cosine=0.2).health is Health.UNKNOWN
    assert health_verdict(loss_global=float("nan"), queue_size=8).health is Health.UNKNOWN
    with pytest.raises(InputError):
        health_verdict(loss_global=1.0)
    with pytest.raises(InputError):
        health_verdict(top1_in_batch=0.5)
    with pytest.raises(InputError, match="inf"):
        health_verdict(mean_cosine=float("inf"))
    assert health_verdict(mean_cosine=0.2).to_dict()["health"] == "unknown"
