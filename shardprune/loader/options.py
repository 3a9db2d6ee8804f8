"""How the loader reads: the I/O planner's settings and their defaults by storage kind.

Local reads are system calls, so gaps are never bridged and one read per unit is in
flight; an object-store request costs a round trip, so pruned samples smaller than
``max_gap`` are read through rather than splitting the request, further gaps are read
through (smallest first) up to ``gap_budget`` of the planned bytes, and several range
requests of a unit are in flight at once (see :func:`~shardprune.loader.ioplan.plan_reads`).
None of these settings changes which samples an epoch yields, or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardprune.validate import check_float, check_int

LOCAL_MAX_GAP = 0
REMOTE_MAX_GAP = 16 * 1024
LOCAL_GAP_BUDGET = 0.0
REMOTE_GAP_BUDGET = 0.2
DEFAULT_MAX_BLOCK = 4 * 1024 * 1024
LOCAL_IO_CONCURRENCY = 1
REMOTE_IO_CONCURRENCY = 8


@dataclass(frozen=True)
class ReadOptions:
    """The I/O planner's settings.

    Attributes:
        max_gap: Largest gap in bytes read through to merge two range requests.
        gap_budget: Further gaps read through, as a fraction of the planned bytes.
        max_block: Largest range request / worker read unit in bytes.
        io_concurrency: Concurrent range requests per read unit.
    """

    max_gap: int
    gap_budget: float
    max_block: int
    io_concurrency: int

    @classmethod
    def for_storage(
        cls,
        local: bool,
        *,
        max_gap: int | None = None,
        gap_budget: float | None = None,
        max_block: int = DEFAULT_MAX_BLOCK,
        io_concurrency: int | None = None,
    ) -> ReadOptions:
        """Checked settings; None takes the default for local or remote storage."""
        gap = (LOCAL_MAX_GAP if local else REMOTE_MAX_GAP) if max_gap is None else max_gap
        budget = (LOCAL_GAP_BUDGET if local else REMOTE_GAP_BUDGET) if gap_budget is None else gap_budget
        io = (LOCAL_IO_CONCURRENCY if local else REMOTE_IO_CONCURRENCY) if io_concurrency is None else io_concurrency
        return cls(
            max_gap=check_int("max_gap", gap, 0),
            gap_budget=check_float("gap_budget", budget, 0, 10, fix="a fraction of the planned bytes"),
            max_block=check_int("max_block", max_block, 1),
            io_concurrency=check_int("io_concurrency", io, 1),
        )
