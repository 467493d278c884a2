"""Shared test settings: deterministic, single-threaded-friendly, headless plotting."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
# Console output is asserted on whole lines: a wide console (set before collapsekit.cli creates
# its consoles) keeps long temporary paths (longer under pytest-xdist) from being wrapped.
os.environ["COLUMNS"] = "200"
# Tests use tiny tensors: one intra-op thread is faster than two, and immune to a busy machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Slow tests first (a stable sort): under pytest-xdist the long ones start at once and the
    # short ones fill the gaps, instead of one worker finishing a long test alone at the end.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not a directory named gpu
            item.add_marker(skip_gpu)
