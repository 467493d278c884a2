"""Seeded sampling: rank partitions of global batches and mid-epoch starts."""

from __future__ import annotations

from collapsekit.train.sampling import EpochSampler


def test_sampler_partitions_global_batches_across_ranks() -> None:
    full = list(EpochSampler(10, 4, seed=3))
    r0 = list(EpochSampler(10, 4, seed=3, rank=0, world=2))
    r1 = list(EpochSampler(10, 4, seed=3, rank=1, world=2))
    assert len(full) == 8 and len(set(full)) == 8  # drop_last: 2 batches of 4
    for b in range(2):
        batch = full[4 * b : 4 * b + 4]
        assert r0[2 * b : 2 * b + 2] == batch[0::2] and r1[2 * b : 2 * b + 2] == batch[1::2]
    s = EpochSampler(10, 4, seed=3)
    s.set_epoch(0, start_batch=1)
    assert list(s) == full[4:]
    s.set_epoch(1)
    assert list(s) != full  # a new permutation each epoch
