"""The local cache (``cache_dir``, ``cache_limit``) on a multi-epoch pruned run from object storage.

    python benchmarks/cache_bench.py                        # 110 KiB and 4 KiB samples, 5 epochs, r = 0.5
    python benchmarks/cache_bench.py --sizes 110K --epochs 3 --limits none,0.5
    python benchmarks/cache_bench.py --help

Server and data as ``benchmarks/s3_bench.py`` (whose helpers this imports): s3rver on
127.0.0.1 behind ``benchmarks/shapeproxy.py`` (20 ms before each response, 50 MB/s per
connection), WebDataset tars of random bytes, ``--dataset-mb`` per sample size in
``--shard-mb`` shards. Pruning: a seeded keep mask of exactly ``round((1 - r) N)`` samples,
a different one each epoch (so an epoch keeps samples earlier epochs kept, and others).

For each cache limit (``none``: no cache; a fraction: that share of the dataset's shard
bytes, in a fresh cache folder under ``.bench/``), one loader runs ``--epochs`` epochs.
Reported per epoch: seconds, bytes read from storage (the loader's counter, and the bytes
the proxy sent), range requests, cache hits (samples) and their bytes, and the cache's
disk use at the end of the epoch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from machineinfo import machine_line  # noqa: E402
from maskpolicy import keep_mask  # noqa: E402
from s3_bench import shaped_s3rver, uploaded  # noqa: E402

from shardprune.loader import StreamingLoader  # noqa: E402
from shardprune.policies.decision import EpochDecision, PolicyBase  # noqa: E402
from shardprune.scores.snapshot import ScoreSnapshot  # noqa: E402

CACHES = REPO / ".bench" / "cache"


class EpochMaskPolicy(PolicyBase):
    """Keep :func:`keep_mask` ``(n, r, seed=epoch)``: a different seeded mask each epoch, weight N / kept."""

    name = "epoch_mask"

    def __init__(self, n: int, ratio: float) -> None:
        super().__init__(n=n, ratio=ratio)

    def decide(self, snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> EpochDecision:
        keep = keep_mask(int(self.params["n"]), float(self.params["ratio"]), seed=1000 + epoch)
        w = np.full(keep.size, keep.size / max(int(keep.sum()), 1), dtype=np.float32)
        return EpochDecision(keep=keep, weights=w, keep_prob=None)


def run(url: str, options: dict[str, Any], n: int, limit: int | None, folder: Path | None, proxy: Any,
        args: argparse.Namespace, epochs: int | None = None) -> list[dict[str, Any]]:
    cache: dict[str, Any] = {}
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        cache = {"cache_dir": folder, "cache_limit": limit}
    rows = []
    with StreamingLoader(
        url, storage_options=options, batch_size=args.batch_size, policy=EpochMaskPolicy(n, args.ratio),
        num_epochs=args.epochs, num_workers=args.workers, decode=False, mixup=False, drop_last=False,
        fields=["bin"], **cache,
    ) as loader:
        for epoch in range(args.epochs if epochs is None else epochs):
            loader.set_epoch(epoch)
            proxy.reset_counts()
            t0 = time.perf_counter()
            samples = sum(len(b["ids"]) for b in loader)
            secs = time.perf_counter() - t0
            s = loader.epoch_stats
            rc = loader.fetcher.cache
            rows.append({
                "epoch": epoch, "samples": samples, "seconds": secs, "bytes_kept": s.bytes_kept,
                "bytes_read": s.bytes_read, "proxy_bytes": proxy.counts()["bytes_sent"], "requests": s.requests,
                "cache_hits": s.cache_hits, "cache_bytes": s.cache_bytes,
                "disk": 0 if rc is None else rc.disk_usage(),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--sizes", default="110K,4K", help="sample sizes (default 110K,4K)")
    parser.add_argument("--limits", default="none,0.5,1.0",
                        help="cache limits: none (no cache) or a fraction of the dataset's bytes (default none,0.5,1.0)")
    parser.add_argument("--ratio", type=float, default=0.5, help="prune ratio r (default 0.5)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--dataset-mb", type=int, default=64, help="MiB of samples per size (default 64)")
    parser.add_argument("--shard-mb", type=int, default=8, help="MiB per shard (default 8)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--mbps", type=float, default=50.0, help="MB/s per connection (default 50)")
    args = parser.parse_args(argv)
    mp.set_start_method("forkserver", force=True)
    table: list[tuple[str, str, dict[str, Any]]] = []
    with shaped_s3rver(args.latency_ms, args.mbps) as (server, proxy, opts):
        for size_text in args.sizes.split(","):
            local, url, n = uploaded(server, size_text, args.dataset_mb, args.shard_mb)
            data_bytes = sum(p.stat().st_size for p in local.glob("*.tar"))
            # Untimed: starts the forkserver and imports the client stack once.
            run(url, opts, n, None, None, proxy, args, epochs=1)
            for text in args.limits.split(","):
                limit = None if text == "none" else int(float(text) * data_bytes)
                folder = None if limit is None else CACHES / f"{size_text}-{text}"
                for row in run(url, opts, n, limit, folder, proxy, args):
                    label = "no cache" if limit is None else f"{float(text):.0%} ({limit / 2**20:.1f} MiB)"
                    row.update(size=size_text, limit=label, data_bytes=data_bytes)
                    print(json.dumps(row), flush=True)
                    table.append((size_text, label, row))
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
    print()
    print(machine_line())
    print(f"proxy: {args.latency_ms} ms per response, {args.mbps} MB/s per connection; {args.dataset_mb} MiB per size, "
          f"{args.shard_mb} MiB shards, {args.workers} workers, r = {args.ratio}, a new seeded mask each epoch")
    print("| size | cache limit | epoch | s | bytes read / kept | proxy bytes / kept | requests | cache hits "
          "(share of kept) | disk use (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size_text, label, row in table:
        kept = row["bytes_kept"]
        print(f"| {size_text} | {label} | {row['epoch']} | {row['seconds']:.2f} | {row['bytes_read'] / kept:.3f} | "
              f"{row['proxy_bytes'] / kept:.3f} | {row['requests']} | {row['cache_hits']} "
              f"({row['cache_hits'] / max(row['samples'], 1):.2f}) | {row['disk'] / 2**20:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
