"""Model tests run single-threaded: tiny convolutions gain nothing from threads, and on a shared
2-core machine oversubscribed threads made this directory ~8x slower (33 s vs 4 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
