"""``benchmarks/cache_write.py`` at toy sizes: it runs, leaves nothing behind, and its JSON adds up."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "cache_write.py"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/stat")
def test_cache_write_benchmark_smoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], load_script
) -> None:
    # In this process, as test_end_to_end_benchmark.py runs its script: a subprocess would spend
    # most of its CPU importing torch and MONAI (collapsekit.data) before writing a byte.
    out = tmp_path / "w.json"
    args = ["--dir", str(tmp_path / "d"), "--files", "2", "--repeats", "1", "--settle", "0"]
    load_script(SCRIPT).main([*args, "--out", str(out)])
    assert f"wrote {out}" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["file_bytes"] == 512 * 512 * 100 * 2
    assert set(res["runs"]) == {"buffered", "direct"} and not (tmp_path / "d").exists()
    med = res["median_cpu_ms_per_file"]
    for kind, runs in res["runs"].items():
        assert len(runs) == 1 and runs[0]["wall_ms_per_file"] > 0
        r = runs[0]
        total = r["cpu_ms_per_file_during"] + r["cpu_ms_per_file_after"]
        assert math.isclose(r["cpu_ms_per_file"], total, rel_tol=1e-9, abs_tol=1e-9)
        assert med[kind] == r["cpu_ms_per_file"]
    if med["buffered"] > 0:
        assert math.isclose(res["ratio_direct_to_buffered"], med["direct"] / med["buffered"])
