"""The GPU benchmark script's CPU fallback: it runs without CUDA and writes sane JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
METHODS = ("mocov2", "local", "zca", "local+zca")


@pytest.mark.slow
def test_gpu_script_cpu_fallback_writes_sane_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], load_script
) -> None:
    # In this process (torch is imported already): the script's own start as a process is
    # test_gpu_script_refuses_cuda_without_a_gpu's. The fewest untimed calls and ZCA repeats:
    # what is checked here is the JSON's shape and arithmetic, not the timings.
    out = tmp_path / "gpu.json"
    args = ["--quick", "--device", "cpu", "--out", str(out), "--threads", "1", "--warmup", "0"]
    args += ["--zca-warmup", "0", "--zca-repeats", "1"]
    assert load_script(SCRIPT).main(args) == 0
    stdout = capsys.readouterr().out
    res = json.loads(out.read_text())

    assert res["device"] == "cpu" and res["card"] is None and res["quick"] is True
    assert "device: cpu" in stdout
    if not torch.cuda.is_available():
        assert res["cuda_available"] is False
        assert any("no CUDA device" in n for n in res["notes"])
        assert "no CUDA device found" in stdout
    assert res["machine"]["torch"] == torch.__version__
    s = res["settings"]
    assert (s["batch"], s["image_size"], s["archs"], s["timed_steps"]) == (8, 64, ["resnet18"], 2)
    assert (s["warmup_steps"], s["zca_warmup"], s["zca_repeats"]) == (0, 0, 1)
    assert s["amp"] is None  # bf16 autocast only on CUDA

    # one step entry per method, all measured
    steps = res["steps"]
    assert [r["method"] for r in steps] == list(METHODS)
    for r in steps:
        assert r["ok"], r.get("error")
        assert r["arch"] == "resnet18" and r["device"] == "cpu"
        assert r["images_per_s"] > 0 and r["median_step_ms"] > 0
        assert len(r["step_ms"]) == 2
        assert math.isclose(r["images_per_s"], r["batch"] / (r["median_step_ms"] / 1e3))
        assert r["losses_finite"]
        assert r["peak_memory_mib"] is None  # no CUDA allocator on the CPU

    # ZCA layer: eigh and Newton-Schulz on the pooled vector and the 7x7 map, 512 channels
    zca = {(tuple(r["input_shape"]), r["method"]): r for r in res["zca"]}
    assert set(zca) == {
        (shape, m) for shape in ((256, 512), (256, 512, 7, 7)) for m in ("eigh", "newton_schulz")
    }
    for r in zca.values():
        assert r["ok"], r.get("error")
        assert r["median_ms"] > 0 and r["finite"] and r["group_size"] == 64
    assert set(res["zca_faster"]) == {"256x512", "256x512x7x7"}

    # extrapolation = slices x epochs / images_per_s / 3600, from the JSON's own numbers
    budget = res["paper_budget"]
    assert budget["slices"] > 0 and budget["epochs"] > 0 and budget["source"]
    ext = res["extrapolation"]
    assert [e["method"] for e in ext] == list(METHODS)
    ips = {r["method"]: r["images_per_s"] for r in steps}
    for e in ext:
        want = budget["slices"] * budget["epochs"] / ips[e["method"]] / 3600
        assert math.isclose(e["gpu_hours"], want, rel_tol=1e-12)
        assert e["images_per_s"] == ips[e["method"]]
        assert e["matches_paper_budget"] is False  # toy sizes, resnet18
    assert res["tests"] is None  # --run-tests not given
    assert res["wall_s"] > 0


def test_gpu_script_refuses_cuda_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cuda", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr
    assert not out.exists()
