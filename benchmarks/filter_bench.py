"""Filters without reads: bytes read for a metadata filter, shardprune against webdataset.

A LAION-shaped WebDataset (each sample a ``bin`` payload and a ``.json`` with its
``width``) is generated, indexed in place with ``index --json-columns width``, and one
epoch of the samples with ``width >= threshold`` is read at selectivities 10/50/90%:

* shardprune: ``StreamingLoader(filter="width >= t")``, the filter evaluated on the
  manifest; filtered-out samples are never planned or read.
* webdataset: ``WebDataset(...).select(lambda s: json width >= t)``, what its issue
  threads recommend; every sample is read, then dropped.

Bytes are ``rchar`` of ``/proc/self/io`` (bytes through read syscalls, page cache
included) around the epoch, in this process (no workers), so both readers are counted
the same way; requests are the loader's range reads. Byte counts are exact; the wall
times are from a shared machine and noisy.

Run: ``python benchmarks/filter_bench.py [--samples 20000] [--payload 4096]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machineinfo import machine_info  # noqa: E402


def io_rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def generate(root: Path, n: int, payload: int, per_tar: int) -> np.ndarray:
    """Write the tars; return each sample's width (a uniform draw of 100 values)."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    widths = rng.integers(0, 100, n) * 10 + 64
    for t in range(-(-n // per_tar)):
        with wds.TarWriter(str(root / f"part-{t:05d}.tar")) as tw:
            for i in range(t * per_tar, min(n, (t + 1) * per_tar)):
                doc = {"width": int(widths[i]), "caption": f"sample {i}"}
                tw.write({"__key__": f"s{i:07d}", "bin": rng.bytes(payload), "json": json.dumps(doc).encode()})
    return widths


def run_shardprune(root: Path, threshold: int) -> dict[str, Any]:
    from shardprune import StreamingLoader, open_dataset

    ds = open_dataset(root)
    loader = StreamingLoader(ds, batch_size=256, num_epochs=1, drop_last=False, filter=f"width >= {threshold}")
    loader.set_epoch(0)
    r0, t0 = io_rchar(), time.perf_counter()
    samples = sum(len(b["ids"]) for b in loader)
    seconds = time.perf_counter() - t0
    stats = loader.epoch_stats
    loader.close()
    return {"samples": samples, "rchar": io_rchar() - r0, "bytes_read": stats.bytes_read,
            "requests": stats.requests, "seconds": seconds}


def run_webdataset(root: Path, threshold: int) -> dict[str, Any]:
    import webdataset as wds

    urls = sorted(str(p) for p in root.glob("*.tar"))

    def keep(sample: dict[str, Any]) -> bool:
        return int(json.loads(sample["json"])["width"]) >= threshold

    stream = wds.WebDataset(urls, shardshuffle=False).select(keep)
    r0, t0 = io_rchar(), time.perf_counter()
    samples = sum(1 for _ in stream)
    return {"samples": samples, "rchar": io_rchar() - r0, "bytes_read": None, "requests": None,
            "seconds": time.perf_counter() - t0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000, help="samples (default 20000)")
    parser.add_argument("--payload", type=int, default=4096, help="payload bytes per sample (default 4096)")
    parser.add_argument("--per-tar", type=int, default=2000, help="samples per tar (default 2000)")
    parser.add_argument("--root", default=None, help="where to generate (default a temporary directory)")
    args = parser.parse_args()
    from shardprune.format.metadata import JsonColumns
    from shardprune.format.tarindex import index_tars

    print(json.dumps(machine_info(), sort_keys=True))
    root = Path(args.root or tempfile.mkdtemp(prefix="filter-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    widths = generate(root, args.samples, args.payload, args.per_tar)
    t0 = time.perf_counter()
    index_tars(root, label_ext=None, metadata=JsonColumns(["width"]), overwrite=True)
    print(f"indexed {args.samples} samples with --json-columns width in {time.perf_counter() - t0:.1f} s")
    total = sum(os.path.getsize(p) for p in root.glob("*.tar"))
    print(f"tar bytes: {total:,}")
    print("| selectivity | threshold | reader | samples | read syscall MiB (rchar) | x selected bytes | range requests | s |")
    print("|---|---|---|---|---|---|---|---|")
    for target in (0.1, 0.5, 0.9):
        threshold = int(np.quantile(widths, 1 - target))
        selected = int(np.count_nonzero(widths >= threshold))
        for name, fn in (("shardprune", run_shardprune), ("webdataset", run_webdataset)):
            r = fn(root, threshold)
            assert r["samples"] == selected, (name, r["samples"], selected)
            share = r["rchar"] / (total * selected / args.samples)
            print(
                f"| {selected / args.samples:.3f} | {threshold} | {name} | {r['samples']:,} | "
                f"{r['rchar'] / 2**20:.1f} | {share:.2f} | {r['requests'] if r['requests'] is not None else '-'} | "
                f"{r['seconds']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
