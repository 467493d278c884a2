"""``benchmarks/scale.py`` at toy sizes: it runs and its JSON is internally consistent."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scale.py"


@pytest.mark.slow
def test_scale_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--volumes", "2", "--size", "64", "--slices", "8", "--memory-volumes", "1,2"]
    args += ["--decode-sample", "2", "--batch", "4", "--loader-workers", "1", "--workers", "2"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out-dir", str(tmp_path / "w"), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert set(res) == {
        "config",
        "machine",
        "dataset",
        "decode",
        "preprocess_single_process",
        "preprocess",
        "cache",
        "memory",
        "memory_bounded",
        "extrapolation",
    }
    ds = res["dataset"]
    assert (ds["layout"], ds["volumes"], ds["size"], ds["slices"]) == ("abdomenct1k", 2, 64, 8)
    assert not ds["reused"] and ds["nii_gz_bytes"] > 0
    cases = sorted((tmp_path / "w" / "abdomenct1k").rglob("Case_*_0000.nii.gz"))
    assert [p.name for p in cases] == ["Case_00001_0000.nii.gz", "Case_00002_0000.nii.gz"]

    dec, pre = res["decode"], res["preprocess"]
    assert dec["volumes"] == 2 and dec["volumes_per_s"] > 0
    assert pre["workers"] == 2 and pre["volumes_per_s"] > 0
    assert math.isclose(pre["limit_volumes_per_s"], dec["volumes_per_s"] * 2)
    assert math.isclose(pre["ratio_to_limit"], pre["volumes_per_s"] / pre["limit_volumes_per_s"])
    assert pre["meets_target"] == (pre["ratio_to_limit"] >= 0.8)
    # three alternated (decode, cold pass) runs; the result is the median run's
    reps = pre["repeats"]
    assert len(reps) == 3 and dec["per_repeat_volumes_per_s"] == [
        r["decode_volumes_per_s"] for r in reps
    ]
    for r in reps:
        assert math.isclose(r["ratio_to_limit"], 2 / r["seconds"] / (r["decode_volumes_per_s"] * 2))
    ratios = sorted(r["ratio_to_limit"] for r in reps)
    assert pre["ratio_to_limit"] == ratios[1] and pre["ratio_to_limit_min_max"] == [
        ratios[0],
        ratios[2],
    ]
    assert math.isclose(pre["slices_per_s"], 16 / pre["seconds"])
    single = res["preprocess_single_process"]["volumes_per_s"]
    assert math.isclose(pre["parallel_efficiency"], pre["volumes_per_s"] / (single * 2))

    # float16 image + uint8-free (no masks): 64*64*2 bytes a slice plus headers and the .json
    cache = res["cache"]
    assert cache["dtype"] == "float16" and cache["stored_slices"] == 16 and cache["files"] == 4
    assert 64 * 64 * 2 <= cache["bytes_per_slice"] < 64 * 64 * 2 * 1.2
    assert cache["bytes"] == sum(p.stat().st_size for p in (tmp_path / "w" / "cache").iterdir())

    # each size read by the process itself (0 loader workers) and by 1 DataLoader worker
    mem = res["memory"]
    assert [(m["loader_workers"], m["volumes"]) for m in mem] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert mem[1]["slices"] > mem[0]["slices"] > 0 and mem[3]["slices"] == mem[1]["slices"]
    assert mem[1]["volume_bytes"] == 2 * mem[0]["volume_bytes"] == 2 * 64 * 64 * 8 * 2
    for m in mem:
        assert 50 < m["baseline_mib"] <= m["peak_mib"] < 8192
        assert math.isclose(m["epoch_growth_mib"], m["peak_mib"] - m["baseline_mib"])
    assert mem[0]["loader_workers_peak_mib"] < mem[2]["loader_workers_peak_mib"]  # a worker ran
    bounded = res["memory_bounded"]
    assert bounded["volumes"] == [1, 2] and bounded["cached_bytes_ratio_largest_to_smallest"] == 2
    assert bounded["loader_workers_0"]["reader_peak_mib"] == [
        mem[0]["peak_mib"],
        mem[1]["peak_mib"],
    ]
    w1 = [mem[2]["loader_workers_peak_mib"], mem[3]["loader_workers_peak_mib"]]
    assert bounded["loader_workers_1"]["reader_peak_mib"] == w1
    assert math.isclose(
        bounded["loader_workers_1"]["peak_ratio_largest_to_smallest"], w1[1] / w1[0]
    )

    ext = res["extrapolation"]
    assert (ext["volumes"], ext["slices"], ext["in_plane"]) == (1000, 200_000, 512)
    scale = (512 / 64) ** 2
    assert math.isclose(ext["cache_gb"], 200_000 * cache["bytes_per_slice"] * scale / 1e9)
    assert math.isclose(
        ext["preprocess_hours"], 200_000 * scale / pre["slices_per_s"] / 3600, rel_tol=1e-9
    )
    assert math.isclose(
        ext["loader_epoch_hours"], 200_000 * scale / mem[-1]["slices_per_s"] / 3600, rel_tol=1e-9
    )
    assert "(a) cold preprocessing, 2 workers" in proc.stdout and "wrote" in proc.stdout
