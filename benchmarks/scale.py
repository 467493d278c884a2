"""The data pipeline at AbdomenCT-1K scale: parallel preprocessing, bounded memory, cache size.

Writes an AbdomenCT-1K-layout phantom (``AbdomenCT-1K-ImagePart1/Case_XXXXX_0000.nii.gz``, int16
HU, images only: pretraining reads no masks) of ``--volumes`` volumes at ``--size``² in-plane with
``--slices`` slices under ``--out-dir`` (kept and reused by later runs with the same sizes), then
measures:

a. **Cold preprocessing throughput**: ``load_volumes(..., cache_dir=..., workers=W)`` on an empty
   disk cache, in volumes/s, against the *limit* = the single-process ``.nii.gz`` decode rate
   (nibabel, ``np.asanyarray(img.dataobj)``, on ``--decode-sample`` files) × W. Target ≥ 0.8×.
   The decode is timed with the allocator setting every preprocessing worker runs with
   (``collapsekit.data._workers.tune_allocator``: volume-sized blocks are reused instead of being
   unmapped and faulted in again), which makes it faster, so the ratio counts only what
   preprocessing adds; the decode of a plain process is reported too
   (``plain_allocator_volumes_per_s``, ``ratio_to_plain_allocator_decode``).
   The pool's one-time start (a forkserver importing torch and MONAI, seconds) is warmed up on
   two volumes first and reported apart. The decode rate and the cold pass are measured
   ``--repeats`` times, alternated (decode, cold pass on an emptied cache, decode, ...), and the
   ratio is each cold pass against the decode rate measured just before it; the median ratio is
   the result (this machine's speed drifts by 10-20 % over minutes). Also the single-process preprocessing rate
   (``workers=0``, same work as a worker: decode, preprocess, write the entry) on the same
   sample, which says how much of a volume's time is decoding at all; ``parallel_efficiency`` is the pool's rate over that single-process rate × W: how well the
   pool scales, whatever preprocessing costs beyond decoding.
b. **Peak resident memory of a full epoch** over the cached set, for each of ``--memory-volumes``
   (default 50 and 100): a subprocess loads the cached volumes (memory-mapped), builds the
   pretraining dataset (two views at ``--view-size``) and runs one shuffled DataLoader epoch over
   every usable slice. Reported: the process's peak RSS (``VmHWM``) before and after the epoch,
   and ``ru_maxrss`` of its largest DataLoader worker (which counts pages shared with the
   process at fork). The target: the epoch's peak is a constant plus the batches in flight,
   the same for 50 and 100 volumes.
c. **Cache size** per slice, and the extrapolation to AbdomenCT-1K (``--target-volumes`` 1,000
   volumes, ``--target-slices`` 200,000 slices at 512²): preprocessing time (from the measured
   slices/s), cache size (from bytes per stored slice, scaled to 512²), and the DataLoader epoch
   time (from the measured epoch slices/s; a training epoch is bounded by the model's step rate
   instead, see ``benchmarks/data_throughput.py``).

Prints ratios and writes JSON (``--out``). Usage::

    # the measurement (on a quiet machine; ~10 GB under --out-dir for 100 volumes)
    python benchmarks/scale.py --out-dir /scratch/ck-scale --out benchmarks/results/scale.json
    # a smoke test (seconds)
    python benchmarks/scale.py --volumes 2 --size 64 --slices 8 --memory-volumes 1,2 \\
        --decode-sample 2 --batch 4 --loader-workers 0 --out-dir /tmp/s --out /tmp/s/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: AbdomenCT-1K as the paper uses it (DESIGN.md): about 1,000 volumes, ~200k axial slices at 512².
TARGET_VOLUMES = 1_000
TARGET_SLICES = 200_000
TARGET_SIZE = 512
TARGET_RATIO = 0.8


def _write_case(root: str, i: int, size: int, slices: int, seed: int) -> None:
    import nibabel as nib

    from collapsekit.data import generate_phantom
    from collapsekit.data.spec import phantom_case_seed

    image, _, affine = generate_phantom(phantom_case_seed(seed, i), size, slices)
    part = Path(root) / f"AbdomenCT-1K-ImagePart{1 + i // 400}"  # 3 parts for ~1,000 cases
    part.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(image, dtype=np.int16), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = part / f".Case_{i + 1:05d}.tmp.nii.gz"
    nib.save(img, str(tmp))
    tmp.replace(part / f"Case_{i + 1:05d}_0000.nii.gz")


def write_dataset(root: Path, volumes: int, size: int, slices: int, workers: int) -> dict[str, Any]:
    """Write (or reuse) the phantom; returns ``{"seconds", "reused", "bytes"}``."""
    marker = root / "scale_dataset.json"
    spec = {"volumes": volumes, "size": size, "slices": slices, "seed": 0, "version": 1}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return {"seconds": 0.0, "reused": True, "bytes": _tree_bytes(root, "*.nii.gz")}
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    # The preprocessing pool's own start (a forkserver that imports torch and MONAI once): a
    # forkserver started here without that preload would be the one every later pool of this
    # process forks from, and each of their workers would import torch and MONAI again, inside
    # the timed cold passes of (a).
    from collapsekit.data._workers import worker_pool

    with worker_pool(max(1, min(workers, volumes))) as pool:
        futures = [pool.submit(_write_case, str(root), i, size, slices, 0) for i in range(volumes)]
        for f in futures:
            f.result()
    marker.write_text(json.dumps(spec))
    return {
        "seconds": time.perf_counter() - t0,
        "reused": False,
        "bytes": _tree_bytes(root, "*.nii.gz"),
    }


def _tree_bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file())


def decode_rate(paths: list[Path]) -> dict[str, Any]:
    """Single-process ``.nii.gz`` decode (nibabel): volumes/s over ``paths``."""
    import nibabel as nib

    t0 = time.perf_counter()
    for p in paths:
        np.asanyarray(nib.load(str(p)).dataobj)
    seconds = time.perf_counter() - t0
    return {"volumes": len(paths), "seconds": seconds, "volumes_per_s": len(paths) / seconds}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB).

    ``VmHWM`` from ``/proc/self/status`` where there is one: ``ru_maxrss`` of a process started by
    ``subprocess`` also counts its parent's memory at the fork before ``exec`` (Linux keeps the
    larger of the two), which would hide the number measured here.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    kib = 1024 if sys.platform == "darwin" else 1  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib / 1024


def _epoch_child(args: argparse.Namespace) -> None:
    """Subprocess body of (b): load cached volumes, run one DataLoader epoch, print JSON."""
    import torch

    from collapsekit.data import (
        LoadOptions,
        TwoViewTransform,
        discover,
        load_volumes,
        pretrain_dataset,
    )

    records = discover("abdomenct1k", args.data_dir).split("all")[: args.child_volumes]
    volumes = load_volumes(records, options=LoadOptions(cache_dir=args.cache_dir, workers=0))
    ds = pretrain_dataset(volumes, TwoViewTransform(size=args.view_size))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.loader_workers,
        drop_last=False,
        generator=torch.Generator().manual_seed(0),
    )
    before = peak_rss_mib()
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch["view1"].shape[0]
    seconds = time.perf_counter() - t0
    kib = 1024 if sys.platform == "darwin" else 1
    print(
        json.dumps(
            {
                "volumes": len(volumes),
                "slices": n,
                "epoch_seconds": seconds,
                "slices_per_s": n / seconds,
                "baseline_mib": before,
                "peak_mib": peak_rss_mib(),
                "loader_workers_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                / kib
                / 1024,
                "volume_bytes": int(sum(v.image.nbytes for v in volumes)),
            }
        )
    )


def epoch_memory(
    args: argparse.Namespace, data_dir: Path, cache: Path, n: int, loader_workers: int
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--epoch-child",
        "--child-volumes",
        str(n),
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(cache),
        "--view-size",
        str(args.view_size),
        "--batch",
        str(args.batch),
        "--loader-workers",
        str(loader_workers),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"epoch subprocess failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["epoch_growth_mib"] = res["peak_mib"] - res["baseline_mib"]
    res["loader_workers"] = loader_workers
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--volumes", type=int, default=100)
    ap.add_argument("--size", type=int, default=512, help="in-plane size (px)")
    ap.add_argument("--slices", type=int, default=100, help="slices per volume")
    ap.add_argument("--workers", type=int, default=None, help="preprocessing workers (all cores)")
    ap.add_argument(
        "--out-dir", type=Path, default=None, help="dataset + cache (default: a temp dir)"
    )
    ap.add_argument("--decode-sample", type=int, default=8, help="files timed single-process")
    ap.add_argument(
        "--repeats", type=int, default=3, help="alternated decode / cold-pass measurements"
    )
    ap.add_argument("--memory-volumes", default="50,100", help="comma-separated volume counts")
    ap.add_argument("--view-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--loader-workers", type=int, default=None, help="DataLoader workers (min(4, cores))"
    )
    ap.add_argument("--target-volumes", type=int, default=TARGET_VOLUMES)
    ap.add_argument("--target-slices", type=int, default=TARGET_SLICES)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    # (b) runs in a subprocess of this script:
    ap.add_argument("--epoch-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-volumes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from collapsekit.data._workers import available_cpus, tune_allocator

    cpus = available_cpus()
    if args.loader_workers is None:
        args.loader_workers = min(4, cpus)
    if args.epoch_child:
        _epoch_child(args)
        return

    import torch

    from collapsekit.data import LoadOptions, discover, load_volumes
    from collapsekit.data.cache import CACHE_IMAGE_DTYPE, clear_cache

    workers = args.workers or cpus
    memory_ns = sorted({min(int(x), args.volumes) for x in args.memory_volumes.split(",") if x})
    tmp = None
    if args.out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="collapsekit-scale-")
        args.out_dir = Path(tmp.name)
    data_dir, cache = args.out_dir / "abdomenct1k", args.out_dir / "cache"
    try:
        written = write_dataset(data_dir, args.volumes, args.size, args.slices, workers)
        records = discover("abdomenct1k", data_dir).split("all")
        assert len(records) == args.volumes, f"expected {args.volumes} cases, found {len(records)}"
        sample = [Path(r.image) for r in records[: max(1, min(args.decode_sample, len(records)))]]
        decode_rate(sample[:1])  # warm imports and the page cache
        # The decode as a plain process runs it, then with the allocator setting of the workers
        # (tune_allocator: freed volume-sized blocks are reused, not unmapped). The limit is the
        # latter, so the ratio counts only what preprocessing adds to a worker's decode.
        plain = decode_rate(sample)
        tuned = tune_allocator()

        # The same work as one worker's (decode, preprocess, write the entry), in this process.
        clear_cache()
        load_volumes(
            records[:1], options=LoadOptions(cache_dir=args.out_dir / "cache-first", workers=0)
        )  # first calls
        shutil.rmtree(args.out_dir / "cache-first")
        clear_cache()
        t0 = time.perf_counter()
        load_volumes(
            records[: len(sample)],
            options=LoadOptions(cache_dir=args.out_dir / "cache-single", workers=0),
        )
        single = {"volumes": len(sample), "seconds": time.perf_counter() - t0}
        single["volumes_per_s"] = single["volumes"] / single["seconds"]
        shutil.rmtree(args.out_dir / "cache-single")
        clear_cache()

        # Start the worker pool's forkserver once (it imports torch and MONAI: seconds, once per
        # process) on two volumes, so (a) times the steady state that 1,000 volumes would see.
        t0 = time.perf_counter()
        load_volumes(
            records[:2], options=LoadOptions(cache_dir=args.out_dir / "cache-warm", workers=2)
        )
        pool_start = time.perf_counter() - t0
        shutil.rmtree(args.out_dir / "cache-warm")
        clear_cache()

        # Alternated: the decode limit, then a cold pass on an emptied cache; the ratio of each
        # pass is against the decode rate measured just before it.
        repeats: list[dict[str, Any]] = []
        for _ in range(max(1, args.repeats)):
            decode = decode_rate(sample)
            if cache.exists():
                shutil.rmtree(cache)
            clear_cache()
            t0 = time.perf_counter()
            volumes = load_volumes(records, options=LoadOptions(cache_dir=cache, workers=workers))
            seconds = time.perf_counter() - t0
            rate = len(volumes) / seconds
            repeats.append(
                {
                    "decode_volumes_per_s": decode["volumes_per_s"],
                    "seconds": seconds,
                    "volumes_per_s": rate,
                    "ratio_to_limit": rate / (decode["volumes_per_s"] * workers),
                }
            )
            stored_slices = sum(int(v.image.shape[2]) for v in volumes)
            usable_slices = sum(len(v.slices) for v in volumes)
            del volumes
            clear_cache()
        ratios = [r["ratio_to_limit"] for r in repeats]
        mid = repeats[int(np.argsort(ratios)[len(ratios) // 2])]  # the median run (odd repeats)
        seconds, rate = mid["seconds"], mid["volumes_per_s"]
        decode = {
            "volumes": len(sample),
            "volumes_per_s": mid["decode_volumes_per_s"],
            "per_repeat_volumes_per_s": [r["decode_volumes_per_s"] for r in repeats],
            "allocator_tuned": tuned,
            "plain_allocator_volumes_per_s": plain["volumes_per_s"],
        }
        limit = decode["volumes_per_s"] * workers
        single_limit = single["volumes_per_s"] * workers
        ratio = float(np.median(ratios))
        preprocess = {
            "workers": workers,
            "repeats": repeats,
            "seconds": seconds,
            "volumes_per_s": rate,
            "slices_per_s": stored_slices / seconds,
            "limit_volumes_per_s": limit,
            "ratio_to_limit": ratio,
            "ratio_to_limit_min_max": [min(ratios), max(ratios)],
            "ratio_to_plain_allocator_decode": rate / (plain["volumes_per_s"] * workers),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio >= TARGET_RATIO,
            "single_process_limit_volumes_per_s": single_limit,
            "parallel_efficiency": rate / single_limit,
            "warm_up_seconds": pool_start,
            "warm_up_note": "first pool of the process on 2 volumes (forkserver start), not in 'seconds'",
        }

        cache_bytes = _tree_bytes(cache, "*")
        per_slice = cache_bytes / stored_slices
        cache_info = {
            "dtype": str(CACHE_IMAGE_DTYPE),
            "bytes": cache_bytes,
            "files": sum(1 for _ in cache.iterdir()),
            "stored_slices": stored_slices,
            "usable_slices": usable_slices,
            "bytes_per_slice": per_slice,
            "bytes_per_slice_float32_equivalent": args.size**2 * 4,
        }

        # Each size twice: the process reading every slice itself (0 loader workers), and
        # --loader-workers workers doing the reading (the process only receives batches).
        loader_settings = sorted({0, args.loader_workers})
        memory = [
            epoch_memory(args, data_dir, cache, n, w) for w in loader_settings for n in memory_ns
        ]

        def reader_peak(m: dict[str, Any]) -> float:
            return m["peak_mib"] if m["loader_workers"] == 0 else m["loader_workers_peak_mib"]

        bounded: dict[str, Any] = {
            "volumes": memory_ns,
            "cached_bytes_ratio_largest_to_smallest": memory[len(memory_ns) - 1]["volume_bytes"]
            / memory[0]["volume_bytes"],
        }
        for w in loader_settings:
            ms = [m for m in memory if m["loader_workers"] == w]
            peak = [reader_peak(m) for m in ms]
            bounded[f"loader_workers_{w}"] = {
                "reader": "the process" if w == 0 else "largest DataLoader worker",
                "reader_peak_mib": peak,
                "epoch_growth_mib": [m["epoch_growth_mib"] for m in ms],
                "peak_ratio_largest_to_smallest": peak[-1] / peak[0],
            }

        scale = (TARGET_SIZE / args.size) ** 2  # bytes and pixels per slice at 512²
        last = memory[-1]
        extrapolation = {
            "volumes": args.target_volumes,
            "slices": args.target_slices,
            "in_plane": TARGET_SIZE,
            "preprocess_hours": args.target_slices * scale / preprocess["slices_per_s"] / 3600,
            "preprocess_workers": workers,
            "cache_gb": args.target_slices * per_slice * scale / 1e9,
            "loader_epoch_hours": args.target_slices * scale / last["slices_per_s"] / 3600,
            "loader_workers": args.loader_workers,
            "note": "linear in slices x pixels from this run's rates; a training epoch is bounded "
            "by the model's step rate, not by the loader",
        }
        result = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": {
                "platform": platform.platform(),
                "cpus": cpus,
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
            "dataset": {
                "layout": "abdomenct1k",
                "volumes": args.volumes,
                "size": args.size,
                "slices": args.slices,
                "write_seconds": written["seconds"],
                "reused": written["reused"],
                "nii_gz_bytes": written["bytes"],
            },
            "decode": decode,
            "preprocess_single_process": single,
            "preprocess": preprocess,
            "cache": cache_info,
            "memory": memory,
            "memory_bounded": bounded,
            "extrapolation": extrapolation,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.volumes} volumes {args.size}²×{args.slices} (abdomenct1k layout), {cpus} cores")
    print(
        f"decode (1 process): {decode['volumes_per_s']:.2f} vol/s (allocator as in the workers; "
        f"{plain['volumes_per_s']:.2f} vol/s as a plain process); preprocess 1 process: "
        f"{single['volumes_per_s']:.2f} vol/s ({single['volumes_per_s'] / decode['volumes_per_s']:.2f}x decode)"
    )
    print(
        f"(a) cold preprocessing, {workers} workers: {rate:.2f} vol/s vs limit {limit:.2f} "
        f"(decode x workers): median {ratio:.2f}x of {len(ratios)} alternated runs "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}; target >= {TARGET_RATIO}) -> "
        f"{'OK' if preprocess['meets_target'] else 'BELOW TARGET'}"
    )
    print(
        f"    parallel efficiency: {rate / single_limit:.2f}x the single-process preprocessing rate x {workers}"
    )
    for m in memory:
        print(
            f"(b) {m['loader_workers']} loader workers, epoch over {m['volumes']} volumes ({m['slices']} slices, {m['volume_bytes'] / 2**20:.0f} MiB "
            f"cached): peak RSS {m['peak_mib']:.0f} MiB (before epoch {m['baseline_mib']:.0f}, "
            f"loader workers {m['loader_workers_peak_mib']:.0f}), {m['slices_per_s']:.0f} slices/s"
        )
    print(
        f"(c) cache {per_slice / 1024:.0f} KiB per slice ({CACHE_IMAGE_DTYPE}); AbdomenCT-1K "
        f"({args.target_volumes} vol, {args.target_slices} slices at {TARGET_SIZE}²): preprocess "
        f"{extrapolation['preprocess_hours']:.2f} h on {workers} workers, cache "
        f"{extrapolation['cache_gb']:.0f} GB, loader epoch {extrapolation['loader_epoch_hours']:.2f} h"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
