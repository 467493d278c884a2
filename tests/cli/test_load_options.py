"""The CLI is where the environment is read: ``load_options`` turns flags and torchrun's and
collapsekit's variables into the explicit LoadOptions passed down."""

from __future__ import annotations

from pathlib import Path

import pytest

from collapsekit.cli.common import load_options
from collapsekit.data import LoadOptions

_VARS = ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "COLLAPSEKIT_CACHE_DIRECT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for v in _VARS:
        monkeypatch.delenv(v, raising=False)


def test_defaults_without_environment():
    assert load_options() == LoadOptions()
    assert load_options(Path("/c"), 3) == LoadOptions(cache_dir=Path("/c"), workers=3)


def test_torchrun_variables_become_the_rank_layout(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    opts = load_options()
    assert (opts.rank, opts.world_size, opts.local_world_size) == (3, 4, 2)


def test_bad_rank_variables_fall_back_to_one_process(monkeypatch):
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (load_options().rank, load_options().world_size) == (0, 2)
    monkeypatch.setenv("RANK", "5")  # outside the world: the first rank's order
    assert load_options().rank == 0


@pytest.mark.parametrize(
    ("value", "direct"), [("0", False), ("off", False), (" No ", False), ("1", True), ("", True)]
)
def test_cache_direct_variable(monkeypatch, value, direct):
    monkeypatch.setenv("COLLAPSEKIT_CACHE_DIRECT", value)
    assert load_options().direct_io is direct
