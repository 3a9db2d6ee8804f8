"""Read-ahead: a reader starts the next unit's requests before it cuts and decodes the current one.

Observed from outside: the shaping proxy (benchmarks/shapeproxy.py) stamps each range GET's
arrival, and a slow transform stamps when it runs; without read-ahead no request ever
arrives while a transform runs (a reader reads, then decodes, then reads the next unit).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from loader_data import write_dataset
from shardprune.loader import StreamingLoader
from shardprune.loader.decode import Sample

N = 24


class SlowStamp:
    """Transform: sleeps, and appends ``start end`` (CLOCK_MONOTONIC) to a file; picklable."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds

    def __call__(self, sample: Sample) -> Sample:
        start = time.monotonic()
        time.sleep(self.seconds)
        with open(self.path, "a", encoding="ascii") as f:
            f.write(f"{start} {time.monotonic()}\n")
        return sample


@pytest.mark.parametrize("workers", [0, 1])
def test_next_units_requests_overlap_the_current_units_decoding(s3rver: Any, shapeproxy: Any, tmp_path: Path,
                                                                  workers: int) -> None:
    url = s3rver.url()
    write_dataset(url, n=N, per_shard=N, storage_options=s3rver.storage_options)
    stamps = tmp_path / "stamps.txt"
    with shapeproxy.ShapingProxy(s3rver.endpoint_url, latency_s=0.03, bandwidth=1e9) as proxy:
        opts = s3rver.options_via(proxy.url)
        # max_block=1: every sample is a unit of its own (one request), so there are N units.
        with StreamingLoader(url, storage_options=opts, batch_size=3, num_epochs=1, num_workers=workers,
                             max_block=1, transform=SlowStamp(str(stamps), 0.08), shuffle="window") as loader:
            proxy.reset_counts()
            ids = sorted(int(i) for b in loader for i in b["ids"])
            arrivals = list(proxy.arrivals)
    assert ids == list(range(N))
    assert len(arrivals) == N  # one request per unit, nothing read twice
    windows = [tuple(map(float, line.split())) for line in stamps.read_text().splitlines()]
    assert len(windows) == N
    during = [t for t in arrivals if any(a < t < b for a, b in windows)]
    # Read-ahead: while unit k is decoded, a later unit's request is on its way. The first
    # units' requests (up to 6: what a worker's queue holds plus what the loader dispatches
    # before the first batch) all leave before the first decode, and on a loaded machine an
    # arrival can fall in the gap between two decodes, so the bound is a quarter of the units;
    # without read-ahead none would (0 on the code before it).
    assert len(during) >= N // 4, (len(during), arrivals, windows)
