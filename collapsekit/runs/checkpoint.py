"""Checkpoints: plain dicts written atomically, read with ``torch.load(weights_only=True)``.

The format: ``{"format": "collapsekit", "version", "config" (plain data), "epoch", "step",
"total_steps", "model", "optimizer", "scheduler", "scaler", "rng", "losses", "history"}``, built by
:func:`build_checkpoint` and restored by :func:`restore_checkpoint`.

A checkpoint can never run code when loaded: only tensors and plain Python data are allowed. Writes go
to a temporary file in the same directory, are fsync'ed, then ``os.replace``'d over the target, so a
process killed at any moment leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from collapsekit.errors import CheckpointError
from collapsekit.filetypes import FileKind, sniff
from collapsekit.serialization import atomic_write

__all__ = [
    "FORMAT",
    "VERSION",
    "build_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "safe_torch_load",
    "is_safetensors",
    "check_checkpoint_kind",
    "remove_stale_temp_files",
    "NotACheckpointError",
    "rng_state",
    "set_rng_state",
]

FORMAT = "collapsekit"
VERSION = 1


def build_checkpoint(
    config: dict[str, Any],
    *,
    epoch: int,
    step: int,
    total_steps: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    losses: list[float],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """The checkpoint dict of a training session at ``step`` (RNG states captured now).

    Args:
        config: the training configuration as plain data (it rebuilds the model).
        epoch: zero-based epoch the step belongs to.
        step: optimiser steps done.
        total_steps: length of the schedule.
        model, optimizer, scheduler, scaler: objects whose ``state_dict()`` is stored.
        losses: per-step loss history; history: per-epoch metric records.
    """
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "epoch": epoch,
        "step": step,
        "total_steps": total_steps,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
        "losses": losses,
        "history": history,
    }


def restore_checkpoint(
    ckpt: dict[str, Any],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> tuple[int, list[float], list[dict[str, Any]]]:
    """Load what :func:`build_checkpoint` stored into live objects and restore the RNG states.

    The scaler state is restored only when the scaler is enabled (a CPU run has none to restore).

    Returns:
        ``(step, losses, history)``.
    """
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), list(ckpt.get("losses", [])), list(ckpt.get("history", []))


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to ``path`` atomically (temp file in the same dir, fsync, ``os.replace``)."""
    path = Path(path)
    with atomic_write(path, "wb", fsync=True) as f:
        torch.save(obj, f)
    return path


class NotACheckpointError(CheckpointError):
    """A file that is plainly not a checkpoint (text, an image, embeddings ...); ``kind`` says what."""

    def __init__(self, message: str, kind: FileKind) -> None:
        super().__init__(message)
        self.kind = kind


#: Kinds torch.load may read: a PyTorch zip archive (torch >= 1.6), a legacy pickle stream, and a
#: zip whose directory cannot be read (a truncated archive: torch then says it is corrupt).
_LOADABLE = (FileKind.TORCH_ZIP, FileKind.PICKLE, FileKind.ZIP)


def check_checkpoint_kind(path: str | Path) -> FileKind:
    """Sniff ``path`` and refuse, in one line, a file that cannot be a checkpoint.

    Returns:
        The kind (a PyTorch archive or a pickle), for files ``torch.load`` may read;
        ``FileKind.BINARY`` for a ``.safetensors`` file (recognised by its header).

    Raises:
        CheckpointError: missing, a directory, unreadable.
        NotACheckpointError: empty, text, embeddings, an image, a NIfTI volume, other binary data.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, expected a checkpoint file")
    if is_safetensors(path):
        return FileKind.BINARY  # read by safetensors, not torch.load (see safe_torch_load)
    try:
        kind = sniff(path)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    if kind in _LOADABLE:
        return kind
    name = path.name
    if kind is FileKind.EMPTY:
        msg = f"{name} is empty (0 bytes), not a checkpoint"
    elif kind is FileKind.TEXT:
        msg = f"{name} is a text file, not a checkpoint — pass the run directory instead"
    elif kind in (FileKind.NPY, FileKind.NPZ):
        msg = f"{name} holds embeddings ({kind.description}), not a model checkpoint"
    else:
        msg = f"{name} is {kind.description}, not a checkpoint"
    raise NotACheckpointError(msg, kind)


def _refusal_reason(message: str) -> str:
    """The reason inside torch's weights-only error, without its boilerplate, on one line."""
    paragraphs = [p.strip() for p in message.strip().split("\n\n") if p.strip()]
    kept = [
        p
        for p in paragraphs
        if not p.startswith(("Weights only load failed", "Check the documentation"))
    ]
    text = " ".join(" ".join(kept).split())
    text = re.sub(r"^Please file an issue.*?WeightsUnpickler error:\s*", "", text)
    if not text and "WeightsUnpickler error:" in message:  # "Unsupported global: GLOBAL x ..."
        text = " ".join(message.split("WeightsUnpickler error:", 1)[1].split())
        text = text.split(" Please use `torch.serialization.add_safe_globals", 1)[0]
    return text or " ".join(message.split())


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the ``.<name>.pt.*.tmp`` files a killed :func:`save_checkpoint` left in ``directory``.

    Call it only where no other process is writing checkpoints into ``directory`` (a run's rank 0 at
    start or resume). Returns the files removed.
    """
    removed = []
    for tmp in Path(directory).glob(".*.pt.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
    return removed


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def is_safetensors(path: str | Path) -> bool:
    """A ``.safetensors`` file by its bytes: an 8-byte little-endian header length, then ``{``."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8


def _load_safetensors(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """A ``.safetensors`` file as ``{name: tensor}``; its ``__metadata__`` (strings) under
    ``"__metadata__"`` when present. safetensors holds no code by construction."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            tensors: dict[str, Any] = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = f.metadata()
    except Exception as e:  # noqa: BLE001 - a mangled header raises safetensors' own errors
        first = " ".join(str(e).split())[:160] or type(e).__name__
        raise CheckpointError(f"cannot read safetensors file {path}: corrupt ({first})") from None
    if meta:
        tensors["__metadata__"] = dict(meta)
    return tensors


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Read a checkpoint's tensors and plain data; nothing in the file can run code.

    1. ``.safetensors`` files (sniffed by their header) are read with safetensors.
    2. Everything else goes through ``torch.load(weights_only=True)``.
    3. When that refuses a *global* — a metadata object of another tool: solo-learn's OmegaConf
       ``DictConfig``, timm's ``argparse.Namespace``, Lightning's ``AttributeDict`` — the file is
       read again by :mod:`collapsekit.runs._unpickle`: the same tensor rebuild functions torch
       allows, every metadata class an inert placeholder (nothing imported or called), and any other
       global (``posix.system``, a user's class) refused with torch's own reason, as before.

    The file's kind is sniffed first (:func:`check_checkpoint_kind`), so a config, an image or an
    embeddings array gets a plain answer instead of an unpickler's error. Every failure is one
    line without ANSI codes.
    """
    path = Path(path)
    if is_safetensors(path):
        return _load_safetensors(path, map_location)
    check_checkpoint_kind(path)
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4 ...": the weights-only unpickler decides; we report that
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _ANSI.sub("", _refusal_reason(str(e)))
        if "GLOBAL" in reason or "global" in reason:
            return _load_with_inert_metadata(path, map_location, reason)
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt, truncated or not weights-only loadable "
            f"({reason})"
        ) from None
    except MemoryError:
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt (absurd sizes)") from None
    except Exception as e:  # noqa: BLE001 - a mangled pickle can raise anything; nothing has run
        raise _corrupt(path, e) from None


def _corrupt(path: Path, e: BaseException) -> CheckpointError:
    text = _ANSI.sub("", str(e)).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return CheckpointError(
        f"cannot read checkpoint {path}: corrupt or truncated ({type(e).__name__}: {first[:160]})"
    )


def _load_with_inert_metadata(path: Path, map_location: str | torch.device, reason: str) -> Any:
    """Step 3 of :func:`safe_torch_load`; ``reason`` is torch's refusal, reused for code."""
    from collapsekit.runs._unpickle import RefusedGlobal, load_with_inert_metadata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return load_with_inert_metadata(path, map_location)
    except RefusedGlobal as e:
        if e.qualname not in reason:  # torch stopped at a metadata class; name the code itself
            reason = f"GLOBAL {e.qualname} is neither a tensor, plain data nor inert metadata."
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects that would run code when "
            f"unpickled (only tensors, plain data and inert metadata objects are read; if you "
            f"trust the file, re-save its state dict alone with torch.save): {reason}"
        ) from None
    except MemoryError:
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt (absurd sizes)") from None
    except Exception as e:  # noqa: BLE001 - a mangled pickle can raise anything; nothing has run
        raise _corrupt(path, e) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a collapsekit checkpoint and check its format tag and version."""
    obj = safe_torch_load(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a collapsekit training checkpoint (no format tag '{FORMAT}')"
        )
    if int(obj.get("version", -1)) > VERSION:
        raise CheckpointError(
            f"{path} was written by a newer collapsekit (checkpoint version {obj.get('version')} > {VERSION})"
        )
    return obj


def rng_state() -> dict[str, Any]:
    """Every RNG state a training step depends on, as weights-only-loadable data."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))  # noqa: NPY002 - users seed it
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
