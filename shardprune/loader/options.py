"""How the loader reads: the I/O planner's settings and their defaults by storage kind.

Local reads are system calls, so gaps are never bridged and one read per unit is in
flight; an object-store request costs a round trip, so gaps below the storage cost
model's break-even size are read through (smallest first) up to ``gap_budget`` of the
planned bytes, and many range requests of a worker are in flight at once (see :func:`~shardprune.loader.ioplan.plan_reads`).
None of these settings changes which samples an epoch yields, or in which order.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardprune.costmodel import CostModel
from shardprune.errors import ConfigError
from shardprune.validate import check_float, check_int

#: ``max_gap`` 0: a pruned sample is never read through by default, whatever its size.
LOCAL_MAX_GAP = 0
REMOTE_MAX_GAP = 0
#: Gaps read through on object storage, smallest first and only below the storage cost
#: model's break-even gap, as a fraction of the planned bytes (see
#: :func:`~shardprune.loader.ioplan.plan_reads`): at most 10% more bytes for fewer requests.
LOCAL_GAP_BUDGET = 0.0
REMOTE_GAP_BUDGET = 0.1
DEFAULT_MAX_BLOCK = 4 * 1024 * 1024
LOCAL_IO_CONCURRENCY = 1
REMOTE_IO_CONCURRENCY = 64


@dataclass(frozen=True)
class ReadOptions:
    """The I/O planner's settings.

    Attributes:
        max_gap: Largest gap in bytes read through to merge two range requests.
        gap_budget: Further gaps read through, as a fraction of the planned bytes.
        max_block: Largest range request / worker read unit in bytes.
        io_concurrency: Concurrent range requests per read unit.
        cost: The storage's request latency and bandwidth, which decide the gaps worth
            reading through and the request size (None: no model, local storage).
    """

    max_gap: int
    gap_budget: float
    max_block: int
    io_concurrency: int
    cost: CostModel | None = None

    @classmethod
    def for_storage(
        cls,
        local: bool,
        *,
        max_gap: int | None = None,
        gap_budget: float | None = None,
        max_block: int = DEFAULT_MAX_BLOCK,
        io_concurrency: int | None = None,
        cost: CostModel | None = None,
    ) -> ReadOptions:
        """Checked settings; None takes the default for local or remote storage."""
        if cost is not None and not isinstance(cost, CostModel):
            raise ConfigError(f"cost={cost!r} must be a shardprune.costmodel.CostModel, 'measure' or None")
        gap = (LOCAL_MAX_GAP if local else REMOTE_MAX_GAP) if max_gap is None else max_gap
        budget = (LOCAL_GAP_BUDGET if local else REMOTE_GAP_BUDGET) if gap_budget is None else gap_budget
        io = (LOCAL_IO_CONCURRENCY if local else REMOTE_IO_CONCURRENCY) if io_concurrency is None else io_concurrency
        return cls(
            max_gap=check_int("max_gap", gap, 0),
            gap_budget=check_float("gap_budget", budget, 0, 10, fix="a fraction of the planned bytes"),
            max_block=check_int("max_block", max_block, 1),
            io_concurrency=check_int("io_concurrency", io, 1),
            cost=cost,
        )
