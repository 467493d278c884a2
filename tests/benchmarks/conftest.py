"""Fixtures of the benchmark tests: the scripts under ``benchmarks/`` imported as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def load_script() -> Callable[[Path], ModuleType]:
    """Import a benchmark script (not a package) as a module, so a test runs its ``main`` in the
    test process: a subprocess would spend most of its CPU importing torch and MONAI."""

    def load(script: Path) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load
