"""Pruned epochs from object storage: bytes read, requests and epoch time through a shaping proxy.

    python benchmarks/s3_bench.py epoch                    # 4 KiB, 32 KiB, 110 KiB samples, r = 0/0.3/0.5/0.7
    python benchmarks/s3_bench.py epoch --sizes 110K --dataset-mb 512 --shard-mb 256
    python benchmarks/s3_bench.py bytes                    # bytes read / kept, old vs new defaults (planner only)
    python benchmarks/s3_bench.py plan                     # planning time at 1,281,167 samples
    python benchmarks/s3_bench.py retry                    # persistent 503: requests and time to the error
    python benchmarks/s3_bench.py client                   # client CPU per range request, s3fs vs obstore
    python benchmarks/s3_bench.py --help

Server: s3rver (npm, ``tests/s3rver.py``) on 127.0.0.1, behind ``benchmarks/shapeproxy.py`` (in its own process):
20 ms before each response and 50 MB/s per connection (``--latency-ms``, ``--mbps``), so a
request costs what a cross-zone S3 GET does. Data: WebDataset tars of random bytes
(``KEY.bin`` of the sample size plus ``KEY.cls``), ``--dataset-mb`` per sample size in
``--shard-mb`` shards, indexed with :func:`shardprune.format.tarindex.index_tars` and
uploaded once per run. Pruning: a fixed, seeded keep mask of exactly ``round((1 - r) N)``
samples, the same for every reader.

Readers, ``--workers`` worker processes (shardprune: the second epoch of one loader is timed):

* ``shardprune``: ``StreamingLoader`` with its remote defaults (``max_gap`` 0, gap budget
  0.1 below the break-even gap, requests split to the cost model's size), raw bytes.
* ``webdataset`` (r = 0): the same tars streamed whole (s3fs, 8 MiB readahead), shards
  split over DataLoader workers: what a webdataset user gets, pruned or not.

Reported: epoch seconds, bytes read / kept bytes (the loader's counters; the proxy's count over
epoch 1's window would include epoch 2's read-ahead), range requests, the most requests the
proxy saw in flight, CPU seconds of the reader (its process and workers) and of the server and
proxy during the epoch, and the epoch time over the same reader's r = 0 time (target: at most
``(1 - r) + 0.10``), and shardprune r = 0 vs webdataset.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from machineinfo import machine_line  # noqa: E402
from maskpolicy import MaskPolicy, keep_mask  # noqa: E402
from shapeproxy import ShapingProxyProcess  # noqa: E402

from shardprune.loader import StreamingLoader  # noqa: E402

BENCH = REPO / ".bench" / "s3"


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


# -- data ---------------------------------------------------------------------------------
def make_tars(out: Path, sample_bytes: int, total_bytes: int, shard_bytes: int, seed: int = 0) -> int:
    """Write tars of ``KEY.bin`` (random bytes) + ``KEY.cls`` into ``out``; return the sample count."""
    from shardprune.format.tarindex import index_tars

    n = max(1, total_bytes // sample_bytes)
    if (out / "shardprune.json").exists():
        return n
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_shard = max(1, shard_bytes // (sample_bytes + 1536))
    for s, start in enumerate(range(0, n, per_shard)):
        with tarfile.open(out / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(n, start + per_shard)):
                for ext, data in (("bin", rng.bytes(sample_bytes)), ("cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    index_tars(out)
    return n


def upload(local: Path, url: str, options: dict[str, Any]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    for f in sorted(local.iterdir()):
        fs.put_file(str(f), f"{url}/{f.name}")


@contextmanager
def shaped_s3rver(latency_ms: float, mbps: float) -> Iterator[tuple[Any, ShapingProxyProcess, dict[str, Any]]]:
    """s3rver behind the shaping proxy: ``(server, proxy, storage options reaching it through the proxy)``."""
    from s3rver import running_s3rver

    with running_s3rver() as server:
        with ShapingProxyProcess(server.endpoint_url, latency_ms / 1000, mbps * 1e6) as proxy:
            yield server, proxy, server.options_via(proxy.url)


def uploaded(server: Any, size_text: str, dataset_mb: int, shard_mb: int) -> tuple[Path, str, int]:
    """The tars of one sample size, made once locally and uploaded to ``server``: ``(local folder, URL, samples)``."""
    local = BENCH / f"{size_text}-{dataset_mb}M-{shard_mb}M"
    n = make_tars(local, parse_size(size_text), dataset_mb << 20, shard_mb << 20)
    url = server.url(local.name)
    upload(local, url, server.storage_options)
    return local, url, n


# -- readers ------------------------------------------------------------------------------
def cpu_by_process(exclude: tuple[int, ...] = ()) -> dict[int, float]:
    """CPU seconds so far of this process and of every descendant (workers, server, proxy)."""
    import psutil

    me = psutil.Process()
    out: dict[int, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def run_shardprune(url: str, options: dict[str, Any], keep: np.ndarray, args: argparse.Namespace,
                   harness: tuple[int, ...] = (), on_timed: Any = None) -> dict[str, Any]:
    """One loader, epochs of the same mask; epoch 1 is timed, from the end of epoch 0 to its own end.

    Steady state, as in training: the workers are running, epoch 1's first units were read
    ahead at the end of epoch 0, and epoch 2's first units are read ahead at the end of
    epoch 1 (epoch 2 itself is not iterated).

    ``harness``: PIDs of the server and the proxy, whose CPU seconds in the timed epoch are
    reported apart from the reader's (its process and workers). ``on_timed()`` is called
    just before the timed epoch (the proxy's counters are reset there).
    """
    extra: dict[str, Any] = {} if args.max_block_mb is None else {"max_block": args.max_block_mb << 20}
    if args.io_concurrency is not None:
        extra["io_concurrency"] = args.io_concurrency
    if getattr(args, "shuffle", None):
        extra["shuffle"] = args.shuffle
    if getattr(args, "gap_budget", None) is not None:
        extra["gap_budget"] = args.gap_budget
    loader = StreamingLoader(
        url, storage_options=options, batch_size=args.batch_size, policy=MaskPolicy(keep), num_epochs=3,
        num_workers=args.workers, decode=False, mixup=False, drop_last=False, fields=["bin"], **extra,
    )
    for _ in loader:  # epoch 0: starts the workers and the clients
        pass
    if on_timed is not None:
        on_timed()
    before = cpu_by_process()
    t0 = time.perf_counter()
    samples = sum(len(b["ids"]) for b in loader)  # epoch 1
    secs = time.perf_counter() - t0
    after = cpu_by_process()
    s = loader.epoch_stats
    loader.close()
    delta = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    return {"samples": samples, "seconds": secs, "bytes_read": s.bytes_read, "bytes_kept": s.bytes_kept,
            "requests": s.requests, "gap_bytes": s.gap_bytes,
            "cpu_reader": sum(v for pid, v in delta.items() if pid not in harness),
            "cpu_harness": sum(v for pid, v in delta.items() if pid in harness)}


def _open_streams(src: Iterator[dict[str, Any]], options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    for sample in src:
        yield {"url": sample["url"], "stream": fs.open(sample["url"], "rb", block_size=8 << 20, cache_type="readahead")}


class _Kept:
    def __init__(self, keep: np.ndarray) -> None:
        self.keep = keep

    def __call__(self, sample: dict[str, Any]) -> bool:
        return bool(self.keep[int(sample["__key__"])])


def _item(sample: dict[str, Any]) -> tuple[int, bytes]:
    return int(sample["__key__"]), sample["bin"]


def _wds_pipeline(urls: list[str], options: dict[str, Any], keep: np.ndarray, batch_size: int) -> Any:
    import functools

    import webdataset as wds

    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        functools.partial(_open_streams, options=options),
        wds.tariterators.tar_file_expander,
        wds.tariterators.group_by_keys,
        wds.select(_Kept(keep)),
        wds.map(_item),
        wds.batched(batch_size, collation_fn=list, partial=True),
    )


def run_webdataset(urls: list[str], options: dict[str, Any], keep: np.ndarray, args: argparse.Namespace,
                   on_timed: Any = None) -> dict[str, Any]:
    """Two epochs of one DataLoader (persistent workers); the second is timed."""
    import torch.utils.data as tud

    loader = tud.DataLoader(_wds_pipeline(urls, options, keep, args.batch_size), batch_size=None,
                            num_workers=args.workers, persistent_workers=args.workers > 0,
                            multiprocessing_context="forkserver" if args.workers else None)
    for _ in loader:
        pass
    if on_timed is not None:
        on_timed()
    t0 = time.perf_counter()
    samples = sum(len(b) for b in loader)
    return {"samples": samples, "seconds": time.perf_counter() - t0}


# -- commands -----------------------------------------------------------------------------
def cmd_epoch(args: argparse.Namespace) -> None:
    import psutil

    ratios = [float(r) for r in args.ratios.split(",")]
    rows: list[dict[str, Any]] = []
    with shaped_s3rver(args.latency_ms, args.mbps) as (server, proxy, opts):
        harness = tuple(p.pid for p in psutil.Process().children(recursive=True) if p.name() == "node")
        harness += (proxy.pid,) if proxy.pid is not None else ()
        for size_text in args.sizes.split(","):
            local, url, n = uploaded(server, size_text, args.dataset_mb, args.shard_mb)
            tars = sorted(f"{url}/{p.name}" for p in local.glob("*.tar"))
            # Untimed: starts the forkserver and imports the client stack once, as a second epoch would find.
            run_shardprune(url, opts, keep_mask(n, 0.9), args)
            for r in ratios:
                keep = keep_mask(n, r)
                best: dict[str, Any] | None = None
                for _ in range(args.rounds):
                    res = run_shardprune(url, opts, keep, args, harness, proxy.reset_counts)
                    counts = proxy.counts()
                    res["proxy_bytes"] = counts["bytes_sent"]
                    res["proxy_gets"] = counts["range_gets"]
                    res["max_in_flight"] = counts["max_in_flight"]
                    if best is None or res["seconds"] < best["seconds"]:
                        best = res
                assert best is not None
                rows.append({"reader": "shardprune", "size": size_text, "r": r, **best})
                print(json.dumps(rows[-1]), flush=True)
            if args.webdataset:
                best = None
                for _ in range(args.rounds):
                    res = run_webdataset(tars, opts, keep_mask(n, 0.0), args, proxy.reset_counts)
                    res["proxy_bytes"] = proxy.counts()["bytes_sent"]
                    if best is None or res["seconds"] < best["seconds"]:
                        best = res
                assert best is not None
                rows.append({"reader": "webdataset", "size": size_text, "r": 0.0, **best})
                print(json.dumps(rows[-1]), flush=True)
    print()
    print(machine_line())
    print(f"proxy: {args.latency_ms} ms per response, {args.mbps} MB/s per connection; {args.dataset_mb} MiB per size, "
          f"{args.shard_mb} MiB shards, {args.workers} workers, best of {args.rounds}, shuffle {args.shuffle or 'default'}, "
          f"gap budget {args.gap_budget if args.gap_budget is not None else 'default'}")
    # The proxy's counts over epoch 1's window include epoch 2's read-ahead: bytes come from the loader's counters.
    print("| size | r | reader | s | x r=0 | target | bytes read / kept | requests | max in flight "
          "| CPU s reader / server+proxy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        base = next(x for x in rows if x["reader"] == row["reader"] and x["size"] == row["size"] and x["r"] == 0.0)
        rel = row["seconds"] / base["seconds"]
        kept = row.get("bytes_kept")
        if row["reader"] == "shardprune":
            print(f"| {row['size']} | {row['r']:.1f} | shardprune | {row['seconds']:.2f} | {rel:.2f} | "
                  f"{(1 - row['r']) + 0.10:.2f} | {row['bytes_read'] / kept:.3f} | "
                  f"{row['requests']} | {row['max_in_flight']} | {row['cpu_reader']:.2f} / {row['cpu_harness']:.2f} |")
        else:
            sp = next(x for x in rows if x["reader"] == "shardprune" and x["size"] == row["size"] and x["r"] == 0.0)
            print(f"| {row['size']} | 0.0 | webdataset | {row['seconds']:.2f} | shardprune r=0 is "
                  f"{row['seconds'] / sp['seconds']:.2f}x faster | 1.2x | {row['proxy_bytes'] / sp['bytes_kept']:.3f} (proxy) "
                  f"| - | - | - |")


def cmd_bytes(args: argparse.Namespace) -> None:
    """Bytes read / kept bytes of the planner on the benchmark's datasets: old and new remote defaults."""
    from shardprune.costmodel import REMOTE
    from shardprune.dataset import open_dataset
    from shardprune.loader.ioplan import plan_reads, summarize

    print(machine_line())
    print(f"{args.dataset_mb} MiB per size in {args.shard_mb} MiB tar shards; read order = id order (sequential)")
    print("| size | r | old defaults (max_gap 16 KiB, budget 0.2): read/kept, requests | "
          "new (max_gap 0, budget 0.1 below 1 MB break-even, 1 MB requests): read/kept, requests |")
    print("|---|---|---|---|")
    for size_text in args.sizes.split(","):
        local = BENCH / f"{size_text}-{args.dataset_mb}M-{args.shard_mb}M"
        n = make_tars(local, parse_size(size_text), args.dataset_mb << 20, args.shard_mb << 20)
        m = open_dataset(local).manifest
        for r in (0.3, 0.5, 0.7):
            ids = np.flatnonzero(keep_mask(n, r))
            slots = np.arange(ids.size)
            old = summarize(plan_reads(slots, ids, m.shard, m.offset, m.length, max_gap=16 << 10, max_block=4 << 20,
                                       gap_budget=0.2))
            new = summarize(plan_reads(slots, ids, m.shard, m.offset, m.length, max_gap=0, max_block=4 << 20,
                                       gap_budget=0.1, cost=REMOTE))
            print(f"| {size_text} | {r} | {old.bytes_read / old.sample_bytes:.3f}, {old.requests} | "
                  f"{new.bytes_read / new.sample_bytes:.3f}, {new.requests} |")


def cmd_plan(args: argparse.Namespace) -> None:
    from shardprune.costmodel import REMOTE
    from shardprune.loader.ioplan import plan_reads

    n, shards = args.samples, args.shards
    rng = np.random.default_rng(0)
    length = rng.integers(20_000, 200_000, n).astype(np.int64)
    shard = np.repeat(np.arange(shards), -(-n // shards))[:n]
    first = np.r_[0, np.flatnonzero(np.diff(shard)) + 1]
    before = np.cumsum(length) - length
    offset = before - before[first][shard]
    print(machine_line())
    print(f"{n:,} samples of 20-200 KB in {shards} shards, max_block 4 MiB")
    print("| r | storage | plan s (best of 3) | units | requests | make every unit s |")
    print("|---|---|---|---|---|---|")
    for r in (0.0, 0.5):
        ids = np.flatnonzero(rng.random(n) >= r)
        for name, cost, budget in (("local", None, 0.0), ("remote", REMOTE, 0.1)):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                plan = plan_reads(np.arange(ids.size), ids, shard, offset, length, max_gap=0, max_block=4 << 20,
                                  gap_budget=budget, cost=cost)
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _unit in plan:
                pass
            walk = time.perf_counter() - t0
            print(f"| {r} | {name} | {min(times):.3f} | {len(plan):,} | {plan.req_length.size:,} | {walk:.3f} |")


def cmd_retry(args: argparse.Namespace) -> None:
    from faultproxy import FaultProxy
    from s3rver import running_s3rver

    from shardprune.errors import FetchError
    from shardprune.storage import Storage

    print(machine_line())
    print("| backend | fault | requests for the range | seconds to FetchError |")
    print("|---|---|---|---|")
    with running_s3rver() as server:
        url = server.url("retry")
        Storage(url, server.storage_options, backend="fsspec").write_bytes_atomic("blob", bytes(1 << 20))
        for backend in ("fsspec", "obstore"):
            for fault in (503, 500):
                with FaultProxy(server.endpoint_url, fail_all=fault) as fp:
                    st = Storage(url, server.options_via(fp.url), backend=backend)
                    t0 = time.perf_counter()
                    try:
                        st.read_range("blob", 4096, 4096)
                    except FetchError:
                        pass
                    secs = time.perf_counter() - t0
                    print(f"| {backend} | {fault} | {len(fp.injected)} | {secs:.1f} |")


def cmd_client(args: argparse.Namespace) -> None:
    """Client CPU per range request: Storage.read_ranges on s3fs and on obstore, straight to s3rver."""
    import resource

    from s3rver import running_s3rver

    from shardprune.storage import Storage

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    print(machine_line())
    print("| backend | ranges | wall s | client CPU per request |")
    print("|---|---|---|---|")
    with running_s3rver() as server:
        url = server.url("client")
        Storage(url, server.storage_options, backend="fsspec").write_bytes_atomic("blob", bytes(16 << 20))
        ranges = [("blob", 8192 * k + 100, 5000) for k in range(2000)]
        for backend in ("fsspec", "obstore"):
            st = Storage(url, server.storage_options, backend=backend, max_in_flight=32)
            st.read_ranges(ranges[:64])
            runs = []
            for _ in range(3):
                t0, c0 = time.perf_counter(), cpu()
                st.read_ranges(ranges)
                runs.append((cpu() - c0, time.perf_counter() - t0))
            c, w = min(runs)
            print(f"| {backend} | 2,000 x 5,000 B, 32 in flight | {w:.2f} | {c * 1e6 / len(ranges):.0f} us |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("epoch", help="pruned epochs through the shaping proxy")
    p.add_argument("--sizes", default="4K,32K,110K", help="sample sizes (default 4K,32K,110K)")
    p.add_argument("--ratios", default="0,0.3,0.5,0.7", help="prune ratios; 0 must be first (default 0,0.3,0.5,0.7)")
    p.add_argument("--dataset-mb", type=int, default=64, help="MiB of samples per size (default 64)")
    p.add_argument("--shard-mb", type=int, default=32, help="MiB per shard (default 32)")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes (default 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-block-mb", type=int, default=None, help="read unit size (default: the loader's)")
    p.add_argument("--io-concurrency", type=int, default=None, help="requests in flight per worker (default: the loader's)")
    p.add_argument("--gap-budget", type=float, default=None,
                   help="bytes read through gaps, as a fraction of the kept bytes (default: the loader's, 0.1)")
    p.add_argument("--shuffle", default=None,
                   help="loader shuffle mode (default: the loader's, 'block' for these in-place tars; 'window' is "
                        "the default for converter-shuffled datasets)")
    p.add_argument("--rounds", type=int, default=2, help="epochs per configuration, best kept (default 2)")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--mbps", type=float, default=50.0, help="MB/s per connection (default 50)")
    p.add_argument("--no-webdataset", dest="webdataset", action="store_false")
    p = sub.add_parser("bytes", help="bytes read / kept by the planner, old vs new defaults (no server)")
    p.add_argument("--sizes", default="4K,32K,110K")
    p.add_argument("--dataset-mb", type=int, default=64)
    p.add_argument("--shard-mb", type=int, default=32)
    p = sub.add_parser("plan", help="planning time of the read planner")
    p.add_argument("--samples", type=int, default=1_281_167)
    p.add_argument("--shards", type=int, default=1000)
    sub.add_parser("retry", help="persistent 503/500: requests and seconds until FetchError")
    sub.add_parser("client", help="client CPU per range request, s3fs vs obstore (no proxy)")
    args = parser.parse_args(argv)
    mp.set_start_method("forkserver", force=True)
    commands = {"epoch": cmd_epoch, "bytes": cmd_bytes, "plan": cmd_plan, "retry": cmd_retry, "client": cmd_client}
    commands[args.command](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
