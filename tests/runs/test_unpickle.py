"""The inert-metadata unpickler: tensors exactly as torch builds them, metadata inert, code refused.

``safe_torch_load`` falls back to it only after ``torch.load(weights_only=True)`` refused a global;
these tests drive that path in both of torch's containers (the zip archive and the legacy stream).
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from collapsekit.errors import CheckpointError
from collapsekit.runs._unpickle import InertObject, RefusedGlobal, load_with_inert_metadata
from collapsekit.runs.checkpoint import safe_torch_load


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_namespace_metadata_is_inert_and_tensors_exact(tmp_path: Path, zipped: bool) -> None:
    w = torch.randn(4, 3)
    args = argparse.Namespace(model="resnet50", lr=0.5, sched=["cosine", 10])
    p = tmp_path / "timm.pth.tar"
    torch.save(
        {"state_dict": {"w": w, "p": torch.nn.Parameter(w * 2)}, "args": args},
        p,
        _use_new_zipfile_serialization=zipped,
    )
    obj = safe_torch_load(p)
    assert torch.equal(obj["state_dict"]["w"], w) and obj["state_dict"]["w"].dtype == torch.float32
    assert torch.equal(obj["state_dict"]["p"], w * 2)
    ns = obj["args"]
    assert isinstance(ns, InertObject) and type(ns).qualname == "argparse.Namespace"
    assert ns.state == {"model": "resnet50", "lr": 0.5, "sched": ["cosine", 10]}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_payload_inside_metadata_is_refused_in_both_containers(
    tmp_path: Path, zipped: bool
) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save(
        {"w": torch.zeros(1), "args": argparse.Namespace(x=_Payload(marker))},
        p,
        _use_new_zipfile_serialization=zipped,
    )
    with pytest.raises(CheckpointError) as info:
        safe_torch_load(p)
    assert str(info.value).endswith(
        "GLOBAL posix.system is neither a tensor, plain data nor inert metadata."
    )
    assert not marker.exists()


def test_metadata_modules_need_not_be_installed_and_nothing_is_imported() -> None:
    """A global from a metadata module is a placeholder by name: never imported or called."""
    data = (
        b"\x80\x02clightning.not_a_module\nAttributeDict\nq\x00)\x81q\x01}q\x02X\x01\x00\x00\x00"
        b"aq\x03K\x01sb."
    )  # NEWOBJ lightning.not_a_module.AttributeDict + BUILD {"a": 1}
    obj = _load_pickle_bytes(data)
    assert type(obj).qualname == "lightning.not_a_module.AttributeDict" and obj.state == {"a": 1}


def _load_pickle_bytes(data: bytes) -> Any:
    from collapsekit.runs._unpickle import _Unpickler

    return _Unpickler(io.BytesIO(data)).load()


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"), ("os", "system")],
)
def test_code_globals_are_refused_before_any_call(module: str, name: str) -> None:
    data = f"\x80\x02c{module}\n{name}\nq\x00X\x01\x00\x00\x001q\x01\x85q\x02Rq\x03.".encode(
        "latin-1"
    )  # GLOBAL + REDUCE(("1",))
    with pytest.raises(RefusedGlobal) as info:
        _load_pickle_bytes(data)
    assert info.value.qualname == f"{module}.{name}"


def test_load_with_inert_metadata_reads_a_plain_checkpoint_like_torch(tmp_path: Path) -> None:
    state = {"a": torch.arange(6).reshape(2, 3), "b": torch.tensor(1.5, dtype=torch.float64)}
    torch.save(state, tmp_path / "s.pt")
    got = load_with_inert_metadata(tmp_path / "s.pt")
    for k, v in state.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype
