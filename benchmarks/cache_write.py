"""CPU cost of writing a disk-cache entry: buffered ``np.save`` vs collapsekit's ``O_DIRECT`` writer.

Writes ``--files`` copies of a float16 512² x 100 volume (52 MB, the size of one AbdomenCT-1K
entry) into ``--dir`` each way, alternated, and measures the whole machine's busy CPU time
(``/proc/stat``: user + system + irq + softirq, every process and kernel thread) during the writes
and for ``--settle`` seconds after them, when the kernel writes dirty pages back. Prints ms of CPU
per file and the ratio; writes JSON (``--out``). Linux only. Usage::

    python benchmarks/cache_write.py --dir /scratch/ck-write --out benchmarks/results/cache_write.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np


def busy_seconds() -> float:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, root: Path, a: np.ndarray, files: int, settle: float) -> dict[str, float]:
    from collapsekit.data._direct_io import DirectFile, NpyBuffer

    root.mkdir(parents=True, exist_ok=True)
    buf = NpyBuffer.of(a)
    c0, t0 = busy_seconds(), time.perf_counter()
    for i in range(files):
        if kind == "buffered":
            with open(root / f"{i}.npy", "wb") as f:
                np.save(f, a, allow_pickle=False)
        else:
            with DirectFile(root / f"{i}.npy", buf.buffer, buf.size) as out:
                out.commit()
    wall, c1 = time.perf_counter() - t0, busy_seconds()
    time.sleep(settle)
    c2 = busy_seconds()
    shutil.rmtree(root)
    return {
        "wall_ms_per_file": 1000 * wall / files,
        "cpu_ms_per_file_during": 1000 * (c1 - c0) / files,
        "cpu_ms_per_file_after": 1000 * (c2 - c1) / files,
        "cpu_ms_per_file": 1000 * (c2 - c0) / files,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True, help="a folder on the disk to measure")
    ap.add_argument("--files", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds of writeback counted")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_write.json"))
    args = ap.parse_args(argv)
    if not Path("/proc/stat").exists():
        raise SystemExit("needs Linux (/proc/stat)")
    a = np.asfortranarray(np.random.default_rng(0).uniform(0, 1, (512, 512, 100)), np.float16)
    runs: dict[str, list[dict[str, float]]] = {"buffered": [], "direct": []}
    created = not args.dir.exists()
    try:
        for _ in range(args.repeats):
            for kind in runs:
                runs[kind].append(measure(kind, args.dir / kind, a, args.files, args.settle))
    finally:
        if created:
            shutil.rmtree(args.dir, ignore_errors=True)
    med = {k: float(np.median([r["cpu_ms_per_file"] for r in v])) for k, v in runs.items()}
    result = {
        "dir": str(args.dir),
        "file_bytes": int(a.nbytes),
        "python": sys.version.split()[0],
        "runs": runs,
        "median_cpu_ms_per_file": med,
        "ratio_direct_to_buffered": med["direct"] / med["buffered"] if med["buffered"] else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{a.nbytes / 1e6:.0f} MB per file into {args.dir}: CPU per file (whole machine, writeback "
        f"included) buffered {med['buffered']:.0f} ms, O_DIRECT {med['direct']:.0f} ms "
        f"({result['ratio_direct_to_buffered'] or float('nan'):.2f}x); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
