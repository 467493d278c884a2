"""Preprocessing in worker processes: same volumes as in-process, progress, errors, pool shut down."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from collapsekit.data import (
    LoadOptions,
    clear_cache,
    load_volumes,
    write_phantom_dataset,
)
from collapsekit.data._workers import available_cpus, rank_order
from collapsekit.data.layouts import discover
from collapsekit.errors import ConfigError, DataError
from collapsekit.progress import TaskAdvanced, TaskFinished, TaskStarted


@pytest.fixture
def btcv(tmp_path):
    write_phantom_dataset(tmp_path / "btcv", cases=4, size=48, slices=10, validation=0)
    return discover("btcv", tmp_path / "btcv").split("all")


def _same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.case_id == y.case_id
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.label, y.label)
        np.testing.assert_array_equal(x.slices, y.slices)
        np.testing.assert_array_equal(x.affine, y.affine)


@pytest.mark.slow
def test_pool_gives_the_in_process_volumes_and_reports_rate(tmp_path, btcv):
    serial = load_volumes(btcv, options=LoadOptions(workers=0))
    clear_cache()
    events: list = []
    pooled = load_volumes(btcv, options=LoadOptions(workers=2), progress=events.append)
    _same(serial, pooled)
    assert all(v.image.dtype == np.float32 for v in pooled)  # no disk cache: in memory
    adv = [e for e in events if isinstance(e, TaskAdvanced)]
    assert isinstance(events[0], TaskStarted) and events[0].total == 4
    assert sorted(e.info["case"] for e in adv) == sorted(r.case_id for r in btcv)
    assert all(not e.info["cached"] and e.info["vol/s"] > 0 for e in adv)
    assert isinstance(events[-1], TaskFinished) and events[-1].info == {"volumes": 4, "decoded": 4}
    assert multiprocessing.active_children() == []  # the pool is gone

    # With a disk cache the workers write the entries and the caller maps them.
    clear_cache()
    cached = load_volumes(btcv, options=LoadOptions(workers=2, cache_dir=tmp_path / "c"))
    assert len(list((tmp_path / "c").glob("*.json"))) == 4
    assert all(isinstance(v.image, np.memmap) for v in cached)
    clear_cache()
    _same(cached, load_volumes(btcv, options=LoadOptions(workers=0, cache_dir=tmp_path / "c")))


@pytest.mark.slow
def test_worker_error_is_one_line_data_error_naming_the_file(btcv):
    bad = btcv[2].image
    assert bad is not None
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError) as info:
        load_volumes(btcv, options=LoadOptions(workers=2))
    msg = str(info.value)
    assert str(bad) in msg and "not a readable NIfTI volume" in msg and "\n" not in msg
    # raised as itself: no chained remote traceback for the CLI or a notebook to print
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert multiprocessing.active_children() == []


def test_auto_workers_stay_in_process_for_small_work(btcv, monkeypatch):
    # With workers=None a pool starts only when the remaining serial work is long: four tiny
    # volumes never pay for one, so a pool that cannot start is never asked to.
    import collapsekit.data.loading as loading

    def no_pool(*a, **k):
        raise AssertionError("a pool was started")

    monkeypatch.setattr(loading, "worker_pool", no_pool)
    ref = load_volumes(btcv)
    assert len(ref) == 4
    clear_cache()
    _same(ref, load_volumes(btcv, options=LoadOptions(workers=1)))


def test_load_options_validate_and_expand(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert LoadOptions(cache_dir=Path("~/c")).cache_dir == tmp_path / "c"
    with pytest.raises(ConfigError, match="preprocess workers must be >= 0"):
        LoadOptions(workers=-1)
    with pytest.raises(ConfigError, match="rank must be in 0..1, got 2"):
        LoadOptions(rank=2, world_size=2)
    with pytest.raises(ConfigError, match="world_size and local_world_size must be >= 1"):
        LoadOptions(local_world_size=0)


def test_cores_are_shared_by_the_local_ranks_and_ranks_rotate_the_jobs():
    cores = available_cpus()
    assert cores >= 1 and available_cpus(2) == max(1, cores // 2)
    assert available_cpus(10**6) == 1
    jobs = list(range(10))
    assert rank_order(jobs) == jobs
    assert rank_order(jobs, 1, 2) == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    assert rank_order(jobs, 2, 3) == [6, 7, 8, 9, 0, 1, 2, 3, 4, 5]


def test_the_environment_is_not_read_by_the_data_layer(monkeypatch, btcv):
    """Under torchrun's variables nothing changes unless the caller passes them: ranks and cores
    reach the loader only through LoadOptions."""
    import collapsekit.data.loading as loading

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000000")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert available_cpus() == available_cpus(1) and available_cpus() >= 1
    seen: list[list] = []
    real = loading.rank_order
    monkeypatch.setattr(loading, "rank_order", lambda j, r, w: seen.append([r, w]) or real(j, r, w))
    load_volumes(btcv[:1], options=LoadOptions(workers=0))
    load_volumes(btcv[1:2], options=LoadOptions(workers=0, rank=1, world_size=2))
    assert seen == [[0, 1], [1, 2]]


@pytest.mark.slow
def test_dead_worker_is_a_data_error(tmp_path, btcv):
    # A script without a __main__ guard: its workers die while starting (they re-run the script),
    # which the caller sees as BrokenProcessPool; the user gets one DataError line saying why.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys\n"
        "from collapsekit.data import LoadOptions, discover, load_volumes\n"
        "from collapsekit.errors import DataError\n"
        "try:\n"
        "    load_volumes(discover('btcv', sys.argv[1]).split('all'), options=LoadOptions(workers=2))\n"
        "except DataError as e:\n"
        "    print('DataError:', e)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "btcv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = [x for x in proc.stdout.splitlines() if x.startswith("DataError:")]
    assert len(line) == 1, proc.stdout + proc.stderr
    assert "a preprocessing worker process died while preprocessing case" in line[0]
    assert "__main__" in line[0] and "--preprocess-workers" in line[0]
