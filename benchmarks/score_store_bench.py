"""Score store and pruning policy costs at ImageNet scale (1.3M samples) and at 100M samples.

    python benchmarks/score_store_bench.py                       # 1.3M and 100M, everything
    python benchmarks/score_store_bench.py --sizes 1300000 --calls 5000
    python benchmarks/score_store_bench.py --planning-only-above 10000000   # short on memory
    python benchmarks/score_store_bench.py --help

Measured per dataset size N (local directory store, ``chunk_size`` 65536, no flush timer):

* ``update()``: the training thread calls ``store.update(ids, losses)`` with 256-sample CPU
  torch batches (uniform random ids, pre-generated) as fast as it can. Per-call wall time on
  the training thread (median, p99), and the sustained rate: samples folded per second from
  the first call until ``wait()`` returns (the background thread has applied everything).
* ``update()`` during a flush: a full flush runs on another thread (as the flush timer
  does) while the training thread calls ``update()`` once per millisecond; per-call time.
* flush: ``full`` with every chunk dirty (N x 17 bytes written as a new generation) and
  ``dirty-only`` with 1% of the chunks dirty.
* snapshot: ``snapshot(pin=False)`` (copy + BLAKE2b fingerprint of the columns) and
  ``snapshot(pin=True)`` (plus flushing the dirty chunks and committing the pin).
* planning: ``decide()`` of every registered policy on a snapshot with 95% of samples
  seen (gamma-distributed losses), prune ratio 0.5 (``full``: 0).

The store part needs about 6 x N x 17 bytes of memory at its peak (columns, a snapshot,
flush copies); ``--planning-only-above`` skips it above a size and says so in the output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shardprune.policies import POLICIES, make_policy
from shardprune.scores import ScoreSnapshot, ScoreStore
from shardprune.scores.snapshot import fresh_columns

FP = "score-store-bench"
CHUNK = 65536
#: Seconds between update() calls while a flush runs on another thread (a fast training step).
PACE_S = 0.001


def machine() -> dict[str, Any]:
    from machineinfo import machine_info  # benchmarks/ is on sys.path when run as a script

    return machine_info(numpy=np.__version__, torch=torch.__version__)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_store(n: int, calls: int, batch: int, workdir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    pool = 256
    id_batches = [torch.from_numpy(rng.integers(0, n, batch, dtype=np.int64)) for _ in range(pool)]
    loss_batches = [torch.from_numpy(rng.gamma(2.0, 1.0, batch).astype(np.float32)) for _ in range(pool)]
    root = workdir / f"store-{n}"
    shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {}
    with ScoreStore(root, n, FP, flush_interval_s=None, chunk_size=CHUNK) as st:
        for i in range(200):  # warm-up: allocations, first-touch of the columns' pages
            st.update(id_batches[i % pool], loss_batches[i % pool], epoch=0)
        st.wait()
        lat: list[float] = []
        t_start = time.perf_counter()
        for i in range(calls):
            t_ns = time.perf_counter_ns()
            st.update(id_batches[i % pool], loss_batches[i % pool], epoch=0)
            lat.append((time.perf_counter_ns() - t_ns) / 1000.0)
        t_submitted = time.perf_counter()
        st.wait()
        t_applied = time.perf_counter()
        out["update_calls"] = calls
        out["update_median_us"] = statistics.median(lat)
        out["update_p99_us"] = percentile(lat, 99)
        out["update_max_us"] = max(lat)
        out["submit_rate_samples_s"] = calls * batch / (t_submitted - t_start)
        out["sustained_rate_samples_s"] = calls * batch / (t_applied - t_start)

        chunks = -(-n // CHUNK)
        # What a flush timer does to the training thread: a full flush runs on another
        # thread while the training loop calls update() once per PACE_S (a fast step).
        st.apply(np.arange(0, n, CHUNK, dtype=np.int64), np.ones(chunks, dtype=np.float32), 0)
        flusher = threading.Thread(target=st.flush)
        lat_flush: list[float] = []
        t0 = time.perf_counter()
        flusher.start()
        i = 0
        while flusher.is_alive():
            t_ns = time.perf_counter_ns()
            st.update(id_batches[i % pool], loss_batches[i % pool], epoch=0)
            lat_flush.append((time.perf_counter_ns() - t_ns) / 1000.0)
            i += 1
            time.sleep(max(0.0, PACE_S - (time.perf_counter_ns() - t_ns) / 1e9))
        flusher.join()
        out["flush_concurrent_s"] = time.perf_counter() - t0
        st.wait()
        out["update_during_flush_calls"] = len(lat_flush)
        out["update_during_flush_median_us"] = statistics.median(lat_flush) if lat_flush else float("nan")
        out["update_during_flush_p99_us"] = percentile(lat_flush, 99) if lat_flush else float("nan")
        out["update_during_flush_max_us"] = max(lat_flush) if lat_flush else float("nan")

        st.apply(np.arange(0, n, CHUNK, dtype=np.int64), np.ones(chunks, dtype=np.float32), 0)
        t0 = time.perf_counter()
        st.flush()
        out["flush_full_s"] = time.perf_counter() - t0
        out["flush_full_chunks"] = chunks
        dirty = np.arange(0, chunks, 100, dtype=np.int64)  # 1% of the chunks
        st.apply(dirty * CHUNK, np.full(len(dirty), 2.0, dtype=np.float32), 0)
        t0 = time.perf_counter()
        st.flush()
        out["flush_dirty_s"] = time.perf_counter() - t0
        out["flush_dirty_chunks"] = len(dirty)

        t0 = time.perf_counter()
        st.snapshot(pin=False)
        out["snapshot_s"] = time.perf_counter() - t0
        st.apply(dirty * CHUNK, np.full(len(dirty), 3.0, dtype=np.float32), 0)
        t0 = time.perf_counter()
        st.snapshot(pin=True)
        out["snapshot_pin_s"] = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return out


def planning_snapshot(n: int) -> ScoreSnapshot:
    rng = np.random.default_rng(1)
    cols = fresh_columns(n)
    seen = rng.random(n, dtype=np.float32) < 0.95
    loss = rng.standard_gamma(2.0, n, dtype=np.float32)
    cols["loss"][seen] = loss[seen]
    cols["loss_ema"][seen] = loss[seen] * np.float32(1.1)
    del loss
    cols["delta_ema"][seen] = rng.standard_gamma(1.0, int(seen.sum()), dtype=np.float32) * np.float32(0.3)
    cols["visits"][seen] = 2
    cols["last_epoch"][seen] = 0
    return ScoreSnapshot.from_columns(cols, copy=False)


def bench_planning(n: int, repeat: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    snap = planning_snapshot(n)
    out: dict[str, Any] = {"snapshot_build_s": time.perf_counter() - t0}
    for name in POLICIES:
        policy = make_policy(name, **({} if name == "full" else {"prune_ratio": 0.5}))
        times = []
        kept = 0
        for r in range(repeat):
            t0 = time.perf_counter()
            d = policy.decide(snap, 1 + r, 7, 100)
            times.append(time.perf_counter() - t0)
            kept = d.num_kept
            del d
        out[name] = {"median_s": statistics.median(times), "max_s": max(times), "kept_fraction": kept / n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1300000,100000000", help="comma-separated N (default 1.3M and 100M)")
    ap.add_argument("--calls", type=int, default=20000, help="update() calls per size (default 20000)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3, help="decide() runs per policy, median reported (default 3)")
    ap.add_argument("--planning-only-above", type=int, default=0, help="skip the store part for N above this (0: never)")
    ap.add_argument("--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    info = machine()
    print("machine:", json.dumps(info))
    results: dict[str, Any] = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "sizes": {}}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="score-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for n in sizes:
            res: dict[str, Any] = {}
            if args.planning_only_above and n > args.planning_only_above:
                res["store"] = "skipped (--planning-only-above)"
                print(f"N={n:,}: store part skipped (--planning-only-above {args.planning_only_above})")
            else:
                res["store"] = bench_store(n, args.calls, args.batch_size, workdir)
                s = res["store"]
                print(
                    f"N={n:,} update(): median {s['update_median_us']:.1f} us, p99 {s['update_p99_us']:.1f} us, "
                    f"max {s['update_max_us']:.0f} us; submit {s['submit_rate_samples_s'] / 1e6:.2f} M samples/s, "
                    f"sustained (applied) {s['sustained_rate_samples_s'] / 1e6:.2f} M samples/s"
                )
                print(
                    f"N={n:,} update() every {PACE_S * 1e3:g} ms during a full flush on another thread "
                    f"({s['flush_concurrent_s']:.2f} s, {s['update_during_flush_calls']} calls): median "
                    f"{s['update_during_flush_median_us']:.1f} us, p99 {s['update_during_flush_p99_us']:.1f} us, "
                    f"max {s['update_during_flush_max_us']:.0f} us"
                )
                print(
                    f"N={n:,} flush full ({s['flush_full_chunks']} chunks) {s['flush_full_s']:.3f} s, dirty-only "
                    f"({s['flush_dirty_chunks']} chunks) {s['flush_dirty_s']:.3f} s; snapshot {s['snapshot_s']:.3f} s, "
                    f"pinned snapshot {s['snapshot_pin_s']:.3f} s"
                )
            res["planning"] = bench_planning(n, args.repeat if n <= 10_000_000 else 1)
            for name in POLICIES:
                p = res["planning"][name]
                print(f"N={n:,} plan {name:15s} {p['median_s']:.3f} s (kept {p['kept_fraction']:.3f})")
            results["sizes"][str(n)] = res
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
