"""Small probes behind the I/O section of ``benchmarks/RESULTS.md`` (run by hand, root for cold reads).

    python benchmarks/io_probe.py blocks   # epoch time by max_block, workers, warm/cold cache
    python benchmarks/io_probe.py ratio    # r = 0 vs r = 0.7: warm, cold, io_concurrency, no workers
    python benchmarks/io_probe.py profile  # cProfile of one warm in-process epoch

All read ``.bench/io-tar`` (see ``benchmarks/io_bench.py``) as raw bytes, batch 64, and report
the better of 2 epochs. To compare two versions of the loader, run ``blocks`` with
``PYTHONPATH`` pointing at each checkout.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

BLOCKS = [(4, 2, True), (16, 2, True), (64, 2, True), (1, 2, True), (4, 2, False), (4, 0, False)]


def blocks(root: Path) -> None:
    from io_bench import drop_caches

    from shardprune import StreamingLoader, open_dataset

    ds = open_dataset(root)
    for mb, workers, cold in BLOCKS:
        loader = StreamingLoader(ds, batch_size=64, num_epochs=1, decode=False, num_workers=workers, max_block=mb << 20)
        times = []
        n = 0
        for _ in range(2):
            if cold:
                drop_caches()
            t = time.perf_counter()
            n = sum(len(b["ids"]) for b in loader)
            times.append(time.perf_counter() - t)
        loader.close()
        best = min(times)
        print(f"max_block {mb} MiB, workers {workers}, {'cold' if cold else 'warm'}: {best:.2f} s, {n / best:.0f} samples/s",
              flush=True)


def ratio(root: Path) -> None:
    import io_bench

    from shardprune import open_dataset

    ds = open_dataset(root)
    cases = [(r, 2, conc, cold) for r in (0.0, 0.7) for conc in (1, 4) for cold in (False, True)] + [(0.7, 0, 1, False)]
    for r, workers, conc, cold in cases:
        keep = io_bench.keep_mask(len(ds), r)
        args = argparse.Namespace(batch_size=64, workers=workers, mode="raw", io_concurrency=conc)
        io_bench.run_shardprune(ds, keep, args)  # warm-up: forkserver, imports
        times = []
        for _ in range(2):
            if cold:
                io_bench.drop_caches()
            times.append(io_bench.run_shardprune(ds, keep, args)["seconds"])
        print(f"r={r} workers={workers} io_concurrency={conc} {'cold' if cold else 'warm'}: {min(times):.2f} s", flush=True)


def profile(root: Path) -> None:
    from shardprune import StreamingLoader, open_dataset

    loader = StreamingLoader(open_dataset(root), batch_size=64, num_epochs=1, decode=False, num_workers=0,
                             prefetch_batches=0)
    for _ in loader:  # warm the page cache
        pass
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    n = sum(len(b["ids"]) for b in loader)
    prof.disable()
    print(f"{n} samples in {time.perf_counter() - t:.2f} s")
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["blocks", "ratio", "profile"])
    parser.add_argument("--tar", type=Path, default=REPO / ".bench" / "io-tar", help="converted tar dataset")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    {"blocks": blocks, "ratio": ratio, "profile": profile}[args.probe](args.tar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
