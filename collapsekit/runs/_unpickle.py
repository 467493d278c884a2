"""Read the tensors of checkpoints whose metadata holds other tools' objects, running no code.

``torch.load(weights_only=True)`` refuses a solo-learn checkpoint (its ``cfg`` is an OmegaConf
``DictConfig``), a timm ``train.py`` checkpoint (``args`` is an ``argparse.Namespace``) and a
Lightning ``.ckpt`` whose hyper-parameters are an ``AttributeDict``: the weights are plain tensors,
the *metadata* is a class torch does not know. Allowlisting those classes with
``torch.serialization.add_safe_globals`` would import and call them (``DictConfig.__setstate__``
runs OmegaConf code on the file's data). Instead this unpickler resolves every global itself:

- the globals torch's weights-only unpickler allows (tensor rebuild functions, storages, dtypes,
  ``OrderedDict``, ``torch.Size``, ...), taken from the same table
  (``torch._weights_only_unpickler._get_allowed_globals``), are the real objects: tensors come out
  exactly as ``torch.load`` builds them;
- a global from a *metadata* module (:data:`METADATA_MODULES`: omegaconf, argparse, typing,
  pathlib, enum, Lightning, numpy's scalar/dtype reconstructors, a few inert builtins) becomes an
  :class:`InertObject` subclass named after it: nothing is imported, calling or building it only
  records its arguments and state as plain data;
- any other global (``posix.system``, ``builtins.eval``, ``subprocess.Popen``, a user's class) is
  refused: :class:`RefusedGlobal` is raised before anything is called.

So a ``__reduce__`` payload hidden inside a ``DictConfig`` is refused exactly as it is at the top
level, and nothing from the metadata modules ever runs (they need not even be installed). Only
:func:`collapsekit.runs.checkpoint.safe_torch_load` uses this, and only after
``torch.load(weights_only=True)`` refused a global.
"""

from __future__ import annotations

import _compat_pickle
import pickle
from types import ModuleType
from typing import Any

import torch

__all__ = ["METADATA_MODULES", "InertObject", "RefusedGlobal", "load_with_inert_metadata"]

#: Module roots whose globals become inert placeholders (metadata other tools pickle).
METADATA_MODULES = (
    "omegaconf",
    "argparse",
    "typing",
    "pathlib",
    "enum",
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
)
#: Single globals read as placeholders (inert types and numpy's scalar/dtype reconstructors).
METADATA_GLOBALS = frozenset(
    {
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.str",
        "builtins.int",
        "builtins.float",
        "builtins.bool",
        "builtins.NoneType",
        "collections.defaultdict",
        "collections.deque",
        "copyreg._reconstructor",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "numpy.dtype",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
    }
)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle references a global that is neither weights-only safe nor inert metadata."""

    def __init__(self, qualname: str) -> None:
        super().__init__(f"global {qualname} is code, not data")
        self.qualname = qualname


class InertObject:
    """Stands for an object of another tool's class: holds what the pickle gave it, runs nothing.

    ``type(obj).qualname`` is the class the pickle named (``omegaconf.dictconfig.DictConfig``);
    ``args``, ``state``, ``items`` and ``entries`` are the constructor arguments, the ``BUILD``
    state, ``SETITEMS`` pairs and ``APPENDS`` entries, as plain data (or other placeholders).
    """

    qualname = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: dict[Any, Any]
    entries: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items={}, entries=[])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # the pickle's arguments: kept above
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"][key] = value

    def append(self, value: Any) -> None:
        self.__dict__["entries"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["entries"].extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


def _inert_class(qualname: str) -> type[InertObject]:
    return type(qualname.rsplit(".", 1)[-1], (InertObject,), {"qualname": qualname})


def _is_metadata(module: str, name: str) -> bool:
    return module.split(".", 1)[0] in METADATA_MODULES or f"{module}.{name}" in METADATA_GLOBALS


class _Unpickler(pickle.Unpickler):
    """``find_class``: torch's weights-only allowlist, inert placeholders, or a refusal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inert: dict[str, type[InertObject]] = {}  # one placeholder class per name

    def find_class(self, module: str, name: str) -> Any:
        from torch._weights_only_unpickler import (  # the table torch's own unpickler uses
            _get_allowed_globals,
            _get_user_allowed_globals,
        )

        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names of protocol <= 2
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        allowed = _get_allowed_globals()
        if qualname in allowed:
            return allowed[qualname]
        user = _get_user_allowed_globals()
        if qualname in user:
            return user[qualname]
        if _is_metadata(module, name):
            if qualname not in self._inert:
                self._inert[qualname] = _inert_class(qualname)
            return self._inert[qualname]
        raise RefusedGlobal(qualname)


def _load(file: Any, **kwargs: Any) -> Any:
    # torch's legacy (pre-1.6, non-zip) reader calls ``pickle_module.load`` for its header records:
    # restricted too, never the plain ``pickle.load``
    return _Unpickler(file, **kwargs).load()


#: Passed to ``torch.load(pickle_module=...)``: torch subclasses ``Unpickler`` (for its storages)
#: and calls our ``find_class`` for every other global.
_pickle_module = ModuleType("collapsekit_inert_pickle")
_pickle_module.Unpickler = _Unpickler  # type: ignore[attr-defined]
_pickle_module.load = _load  # type: ignore[attr-defined]
_pickle_module.__dict__["UnpicklingError"] = pickle.UnpicklingError


def load_with_inert_metadata(path: Any, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with :class:`_Unpickler`: tensors as torch builds them, metadata inert.

    Raises:
        RefusedGlobal: the file references a global that is code (nothing was called).
        pickle.UnpicklingError, RuntimeError, ...: a corrupt file (as ``torch.load`` raises them).
    """
    return torch.load(
        path, map_location=map_location, weights_only=False, pickle_module=_pickle_module
    )
