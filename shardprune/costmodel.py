"""What a range request costs: a fixed latency per request and a bandwidth per connection.

The I/O planner (:mod:`shardprune.loader.ioplan`) uses it for two decisions:

1. *Read through a gap or split the request?* Reading ``g`` wasted bytes costs
   ``g / bandwidth`` seconds; a second request costs ``latency_s``. A gap is worth reading
   through only when ``g < latency_s * bandwidth`` (the break-even gap), and then only
   within the gap budget.
2. *How large a request?* A request of ``latency_s * bandwidth`` bytes spends as long
   transferring as waiting; larger blocks are split into requests of about that size
   (at least 64 KiB) so that a unit's requests run in flight together.

:data:`REMOTE` holds the defaults for object storage (20 ms per request, 50 MB/s per
connection: a cross-zone S3 GET, and the shaping proxy of ``benchmarks/s3_bench.py``);
local storage has no cost model (reads are system calls; nothing is bridged or split).
:func:`measure` replaces the defaults with what a store actually costs, timed on a few
requests of one of its files (``StreamingLoader(cost="measure")``).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Protocol

from shardprune.validate import check_float, check_int

log = logging.getLogger("shardprune.costmodel")

#: Smallest request the planner splits a block into.
MIN_REQUEST = 64 * 1024


@dataclass(frozen=True)
class CostModel:
    """Per-request latency and per-connection bandwidth of a storage.

    Args:
        latency_s: Seconds before the first byte of each request (default 0.02, in (0, 60]).
        bandwidth: Bytes per second of one connection (default 50e6, > 0).
    """

    latency_s: float = 0.02
    bandwidth: float = 50e6

    def __post_init__(self) -> None:
        check_float("latency_s", self.latency_s, 0, 60, low_open=True, fix="pass the round trip, e.g. 0.02")
        check_float("bandwidth", self.bandwidth, 0, low_open=True, fix="pass bytes/s, e.g. 50e6")

    @property
    def break_even_gap(self) -> int:
        """Bytes whose transfer costs as much as one more request."""
        return int(self.latency_s * self.bandwidth)

    def request_bytes(self, max_block: int) -> int:
        """Largest request the planner makes: the break-even size, within [64 KiB, max_block]."""
        return max(1, min(max_block, max(MIN_REQUEST, self.break_even_gap)))

    def seconds(self, requests: int, nbytes: int, in_flight: int = 1) -> float:
        """Estimated time of ``requests`` requests for ``nbytes`` bytes, ``in_flight`` at once."""
        return (requests * self.latency_s + nbytes / self.bandwidth) / max(1, in_flight)


REMOTE = CostModel()

#: Bounds a measurement is clamped to: a LAN store answers in about 0.1 ms, and one
#: connection seldom moves more than 10 GB/s or less than 1 MB/s.
LATENCY_RANGE = (1e-4, 10.0)
BANDWIDTH_RANGE = (1e6, 1e10)
#: Bytes of each latency probe, and of the bandwidth probe (at most the file's size).
PROBE_SMALL = 4096
PROBE_LARGE = 8 * 1024 * 1024


class _RangeReader(Protocol):
    def read_range(self, rel: str, offset: int, length: int) -> bytes: ...


def measure(
    storage: _RangeReader,
    rel: str,
    size: int,
    *,
    probes: int = 5,
    large: int = PROBE_LARGE,
    default: CostModel = REMOTE,
) -> CostModel:
    """Time range requests of one file and return its store's cost model.

    One request at a time, as the model defines them: ``probes`` reads of
    :data:`PROBE_SMALL` bytes at spread offsets (the first one opens the connection and
    is not counted; the median of the others is the latency), then one read of ``large``
    bytes (at most ``size``), whose time beyond the latency gives the bandwidth of one
    connection. A file smaller than 1 MiB keeps ``default``'s bandwidth (a small read
    measures the round trip, not the rate). Values are clamped to :data:`LATENCY_RANGE`
    and :data:`BANDWIDTH_RANGE`. Costs ``probes + 1`` requests and about
    ``probes x latency + large / bandwidth`` seconds.

    Args:
        storage: Anything with ``read_range(rel, offset, length)`` (a :class:`~shardprune.storage.Storage`).
        rel: The file to read (a shard).
        size: Its size in bytes (>= 1).
        probes: Latency probes (2..64; default 5).
        large: Bytes of the bandwidth probe (>= 1 MiB; default 8 MiB).
        default: Where a value cannot be measured.
    """
    size = check_int("size", size, 1, fix="pass the size of the file to probe")
    probes = check_int("probes", probes, 2, 64)
    large = check_int("large", large, 1 << 20, fix="at least 1 MiB, so the transfer outweighs the round trip")
    small = min(PROBE_SMALL, size)
    span = max(1, size - small)
    times = []
    for k in range(probes):
        offset = (k * span) // probes
        t0 = time.perf_counter()
        storage.read_range(rel, offset, small)
        times.append(time.perf_counter() - t0)
    latency = min(max(statistics.median(times[1:]), LATENCY_RANGE[0]), LATENCY_RANGE[1])
    bandwidth = default.bandwidth
    n = min(large, size)
    if n >= 1 << 20:
        t0 = time.perf_counter()
        storage.read_range(rel, 0, n)
        transfer = time.perf_counter() - t0 - latency
        bandwidth = min(max(n / max(transfer, 1e-6), BANDWIDTH_RANGE[0]), BANDWIDTH_RANGE[1])
    model = CostModel(latency_s=latency, bandwidth=bandwidth)
    kept = "" if n >= 1 << 20 else (
        f"; bandwidth not measured (file of {size} bytes), kept {default.bandwidth / 1e6:.0f} MB/s"
    )
    log.info(
        "measured %s: %.1f ms per request, %.1f MB/s per connection (break-even gap %d bytes)%s",
        rel, latency * 1e3, bandwidth / 1e6, model.break_even_gap, kept,
    )
    return model
