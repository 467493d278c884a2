"""Helpers for the data tests: tiny NIfTI files and a clean volume cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from collapsekit.data import clear_cache


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` to ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def ct_volume(seed: int = 0, shape: tuple[int, int, int] = (8, 8, 4)) -> np.ndarray:
    """A small int16 'CT': a body of soft tissue (-100..300 HU) surrounded by air (-1000)."""
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000, dtype=np.int16)
    vol[1:-1, 1:-1, :] = rng.integers(-100, 300, size=(shape[0] - 2, shape[1] - 2, shape[2]))
    return vol


@pytest.fixture
def nifti() -> Callable[..., Path]:
    return save_nifti


@pytest.fixture
def ct() -> Callable[..., np.ndarray]:
    return ct_volume


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()
