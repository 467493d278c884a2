"""The public API: what each subpackage's ``__all__`` lists resolves, private stays private, and
environment variables are read only at the entry layer."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import collapsekit

PKG = Path(collapsekit.__file__).parent
SUBPACKAGES = (
    "collapsekit",
    "collapsekit.data",
    "collapsekit.diagnostics",
    "collapsekit.models",
    "collapsekit.monitoring",
    "collapsekit.runs",
    "collapsekit.train",
    "collapsekit.evaluation",
    "collapsekit.experiments",
)


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _is_private(path: Path) -> bool:
    return any(p.startswith("_") and p != "__init__.py" for p in path.relative_to(PKG).parts)


def _dunder_all(path: Path) -> list[str] | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[attr-defined]
    return None


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_all_resolves_without_private_or_duplicate_names(name: str) -> None:
    module = importlib.import_module(name)
    names = list(module.__all__)
    assert len(names) == len(set(names)), "a name listed twice"
    assert not [n for n in names if n.startswith("_") and n != "__version__"]
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def test_every_module_all_resolves() -> None:
    for path in _modules():
        names = _dunder_all(path)
        if names is None:
            continue
        rel = path.relative_to(PKG.parent).with_suffix("")
        dotted = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        module = importlib.import_module(dotted)
        assert [n for n in names if not hasattr(module, n)] == [], dotted


def test_private_modules_are_not_re_exported() -> None:
    """A private module's names never appear in a public ``__all__``."""
    private_names: set[str] = set()
    for path in _modules():
        if _is_private(path) and path.name != "__init__.py":
            tree = ast.parse(path.read_text())
            private_names |= {
                n.name
                for n in tree.body
                if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")
            }
    for name in SUBPACKAGES:
        listed = set(importlib.import_module(name).__all__) & private_names
        assert not listed, f"{name} re-exports private helpers {sorted(listed)}"


def test_errors_are_exported_from_the_package_root() -> None:
    assert (
        collapsekit.CollapsekitError
        is importlib.import_module("collapsekit.errors").CollapsekitError
    )


def _reads_environment(path: Path) -> list[int]:
    """Lines that read ``os.environ`` (``.get``, ``[...]`` as a value, ``getenv``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "getenv" or (
                f.attr == "get" and isinstance(f.value, ast.Attribute) and f.value.attr == "environ"
            ):
                lines.append(node.lineno)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "environ"
        ):
            lines.append(node.lineno)
    return lines


def test_environment_is_read_only_at_the_entry_layer() -> None:
    """The CLI and torchrun's process-group set-up read the environment; the rest of the library
    gets every setting as an argument. One documented exception: the NIfTI voxel limit
    ($COLLAPSEKIT_MAX_VOXELS), which preprocessing worker processes must see too (issue 22)."""
    entry = {PKG / "train" / "distributed.py", PKG / "data" / "_nifti_guard.py"}
    readers = {
        str(p.relative_to(PKG)): lines
        for p in _modules()
        if p.relative_to(PKG).parts[0] != "cli" and p not in entry
        if (lines := _reads_environment(p))
    }
    assert readers == {}
