"""Full flush and snapshot times of one score store, for A/B runs of two checkouts (run by hand).

    PYTHONPATH=/path/to/checkout python benchmarks/store_flush_probe.py 10000000 --label main
    python benchmarks/store_flush_probe.py --help

Two rounds on one local store of N samples (``chunk_size`` 65536): every chunk made dirty and
flushed, then ``snapshot(pin=False)`` and ``snapshot(pin=True)``. Prints the seconds of each.
Alternate two checkouts back to back to compare them on a loaded machine.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from shardprune.scores import ScoreStore

CHUNK = 65536


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("num_samples", type=int, help="N, samples in the store (e.g. 10000000)")
    ap.add_argument("--label", default="", help="printed before the results (e.g. the checkout's name)")
    args = ap.parse_args(argv)
    n, label = args.num_samples, args.label
    tmp = Path(tempfile.mkdtemp())
    res: dict[str, list[float]] = {"flush_full": [], "snapshot": [], "snapshot_pin": []}
    try:
        with ScoreStore(tmp / "s", n, "probe", flush_interval_s=None, chunk_size=CHUNK) as st:
            chunks = -(-n // CHUNK)
            for _ in range(2):
                st.apply(np.arange(0, n, CHUNK, dtype=np.int64), np.ones(chunks, dtype=np.float32), 0)
                for key, call in (
                    ("flush_full", st.flush),
                    ("snapshot", lambda: st.snapshot(pin=False)),
                    ("snapshot_pin", lambda: st.snapshot(pin=True)),
                ):
                    t0 = time.perf_counter()
                    call()
                    res[key].append(round(time.perf_counter() - t0, 3))
    finally:
        shutil.rmtree(tmp)
    print(label, res, flush=True)


if __name__ == "__main__":
    main()
