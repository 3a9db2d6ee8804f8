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
"""

from __future__ import annotations

from dataclasses import dataclass

from shardprune.validate import check_float

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
