"""``benchmarks/end_to_end.py``: its rate arithmetic, and its JSON at a tiny setting."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "end_to_end.py"


def test_steady_rate_leaves_out_warmup_and_epoch_ends(load_script) -> None:
    e2e = load_script(SCRIPT)
    # steps end at t = 1, 2, ..., except a 10 s pause after step 4 (an epoch end) and a slow
    # first step after it
    times = [1.0, 2.0, 3.0, 4.0, 14.0, 16.0, 17.0, 18.0]
    r = e2e.steady_rate(times, batch=8, warmup=2, boundaries={4}, settle=1)
    # intervals k = 2..7 (from step k to k + 1): 1, 1, 10, 2, 1, 1; 4 and 5 left out
    assert r["intervals"] == 4 and r["excluded_intervals"] == 2
    assert math.isclose(r["images_per_s"], 8 * 4 / 4.0)
    assert math.isclose(r["images_per_s_with_epoch_ends"], 8 * 6 / 16.0)
    none = e2e.steady_rate([1.0], batch=8, warmup=0, boundaries=set(), settle=0)
    assert none["images_per_s"] is None and none["intervals"] == 0


@pytest.mark.slow  # ~1 min on 2 shared cores: 2 feeds x (2 step-only + 1 training) at 32 px
def test_end_to_end_benchmark_writes_consistent_json(tmp_path: Path, load_script) -> None:
    out = tmp_path / "e2e.json"
    args = "--device cpu --image-size 32 --batch 4 --steps 3 --step-only-steps 2 --warmup 1"
    args += " --phantom-cases 4 --phantom-size 32 --phantom-slices 8 --workers 0"
    args += " --methods mocov2 --queue-size 16 --monitor-samples 8 --device-augment off,on"
    args += " --final-samples 0"  # no evaluation phantom for the runs' final spectra
    load_script(SCRIPT).main([*args.split(), "--out", str(out)])
    res = json.loads(out.read_text())
    assert set(res) == {"config", "machine", "results"}
    m = res["machine"]
    assert m["device"] == "cpu" and m["card"] is None and m["cores"] >= 1
    assert len(m["loadavg_start"]) == len(m["loadavg_end"]) == 3
    rows = res["results"]
    assert [(r["arch"], r["method"], r["device_augment"], r["compile"]) for r in rows] == [
        ("resnet18", "mocov2", "off", "off"),
        ("resnet18", "mocov2", "on", "off"),
    ]
    for r in rows:
        assert "error" not in r, r.get("traceback")
        assert (r["image_size"], r["batch_size"], r["workers"]) == (32, 4, 0)
        s, e = r["step_only"], r["end_to_end"]
        assert s["before"]["steps"] == s["after"]["steps"] == 2
        expected = (s["before"]["images_per_s"] + s["after"]["images_per_s"]) / 2
        assert math.isclose(s["images_per_s"], expected)
        assert e["steps"] == 4 and e["intervals"] + e["excluded_intervals"] == 3
        assert e["losses_finite"] is True and e["epoch_ends"][-1] == 4
        assert math.isclose(r["ratio"], e["images_per_s"] / s["images_per_s"])


def test_device_script_parses_and_passes_only_known_flags() -> None:
    """benchmarks/gpu_run5.sh (run on a GPU machine later): valid bash, and every flag it gives
    end_to_end.py and scale.py is one they define."""
    script = ROOT / "benchmarks" / "gpu_run5.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    lines = script.read_text().replace("\\\n", " ").splitlines()  # continuation lines joined
    text = " ".join(line for line in lines if "python3 benchmarks/" in line or "=(--" in line)
    sources = {
        "end_to_end.py": SCRIPT.read_text(),
        "scale.py": (ROOT / "benchmarks" / "scale.py").read_text(),
    }
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))
    assert {"--device-augment", "--compile", "--step-only", "--volumes"} <= flags
    for flag in flags:
        assert any(f'"{flag}"' in src for src in sources.values()), flag
