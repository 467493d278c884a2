"""Device probe (issue 13): why 16 preprocessing workers reach only 0.18x of 16x one process.

Writes 48 AbdomenCT-1K-layout phantom volumes (512^2 x 100), then times cold preprocessing with
1, 4, 8 and 16 workers (a fresh cache directory each time, under --cache-root), and the bare
.nii.gz decode in the same number of processes (the limit's own scaling). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scale import write_dataset  # noqa: E402

from collapsekit.data import discover  # noqa: E402
from collapsekit.data.cache import clear_cache  # noqa: E402
from collapsekit.data.loading import load_volumes  # noqa: E402


def _decode(path: str) -> int:
    return int(np.asanyarray(nib.load(path).dataobj).size)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/tmp/probe-data"))
    ap.add_argument("--cache-root", type=Path, default=Path("/tmp/probe-cache"))
    ap.add_argument("--volumes", type=int, default=48)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    res: dict = {"cpus": cpus, "write": write_dataset(args.data, args.volumes, 512, 100, cpus)}
    records = discover("abdomenct1k", args.data).split("all")
    paths = [str(r.image) for r in records]
    ctx = multiprocessing.get_context("forkserver")
    res["decode"], res["preprocess"] = {}, {}
    for w in (1, 4, 8, 16):
        n = min(len(paths) - w, max(4, 3 * w))
        with ProcessPoolExecutor(w, mp_context=ctx) as pool:
            list(pool.map(_decode, paths[:w]))  # start the workers
            t = time.perf_counter()
            list(pool.map(_decode, paths[w : w + n]))
            res["decode"][w] = n / (time.perf_counter() - t)
        cache = args.cache_root / f"w{w}"
        shutil.rmtree(cache, ignore_errors=True)
        clear_cache()
        load_volumes(records[:w], cache_dir=cache, workers=w)  # pool start, not timed
        clear_cache()
        t = time.perf_counter()
        load_volumes(records[w : w + n], cache_dir=cache, workers=w)
        res["preprocess"][w] = n / (time.perf_counter() - t)
        print(
            w,
            "decode",
            round(res["decode"][w], 2),
            "preprocess",
            round(res["preprocess"][w], 2),
            "vol/s",
            flush=True,
        )
        shutil.rmtree(cache, ignore_errors=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
