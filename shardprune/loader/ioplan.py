"""The I/O planner: turn the slots an epoch still needs into a few range requests.

Slots are taken in the plan's *read order* (sequential within a shard). Rules:

1. The *gap* before a slot is the bytes between the previous slot's end and its start,
   in the same shard; a slot in another shard, or starting before the previous one's
   end, always starts a new request.
2. Gaps of at most ``max_gap`` bytes are read through (default 0: samples adjacent on
   disk merge, pruned samples are never read; tar samples written back to back are
   adjacent, a sample's range ending where the next one's header starts).
3. With a *gap budget*, further gaps are read through, smallest first (ties by
   position), while their total stays within ``gap_budget`` times the planned samples'
   bytes. With a cost model (:class:`~shardprune.costmodel.CostModel`), only gaps
   smaller than the break-even gap (``latency_s * bandwidth``) are candidates: a larger
   gap costs more to read than a request. Each bridged gap saves exactly one request,
   so smallest-first saves the most requests for the bytes allowed; bytes read stay at
   most ``1 + gap_budget`` times the planned bytes (plus the gaps of rule 2).
4. A merged run is cut into *requests* spanning at most ``max_request`` bytes (the cost
   model's request size, else ``max_block``), greedily in read order; a single larger
   sample is one request of its own. Many requests of one unit run in flight together.
5. Consecutive requests are grouped greedily into *read units* of at most
   ``max_block`` bytes (a larger request is a unit of its own): the item a worker fetches.

The result is a :class:`ReadPlan`: numpy arrays with no Python object per request or
sample, built in O(samples) vectorised steps (plus one bisection per unit, and one
vectorised step per request of the longest run). It is an indexable, iterable sequence of
:class:`ReadUnit`, each made when asked for and holding only its own slices.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from shardprune.costmodel import CostModel
from shardprune.errors import ConfigError
from shardprune.validate import check_float, check_int


@dataclass(frozen=True)
class ReadBlock:
    """One range request, as plain values (for inspection and tests).

    Attributes:
        shard: Shard index.
        offset: First byte read.
        length: Bytes read.
        slots: Plan slots served by this request, in read order.
        ids: Sample id of each slot.
        starts: Start of each slot's bytes relative to ``offset``.
        lengths: Byte length of each slot's sample.
    """

    shard: int
    offset: int
    length: int
    slots: tuple[int, ...]
    ids: tuple[int, ...]
    starts: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def gap_bytes(self) -> int:
        return self.length - sum(self.lengths)


@dataclass(frozen=True, eq=False)
class ReadUnit:
    """What one worker fetches at once: consecutive requests, at most ``max_block`` bytes.

    Attributes:
        index: Position of the unit in the epoch's unit sequence.
        shard, offset, length: int64[R] shard, first byte and size of each request.
        first: int64[R + 1] the samples of request ``r`` are ``first[r]:first[r + 1]``.
        slots, ids: int64[S] plan slot and sample id of each sample, in read order.
        starts: int64[S] start of each sample relative to its request's offset.
        lengths: int64[S] byte length of each sample.
    """

    index: int
    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    first: np.ndarray
    slots: np.ndarray
    ids: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes the unit reads (samples plus gaps)."""
        return int(self.length.sum())

    @property
    def requests(self) -> int:
        return int(self.length.size)

    @property
    def gap_bytes(self) -> int:
        return self.nbytes - int(self.lengths.sum())

    @property
    def blocks(self) -> tuple[ReadBlock, ...]:
        """The requests as :class:`ReadBlock` values (made on each call; for inspection)."""
        out = []
        for r in range(self.requests):
            a, b = int(self.first[r]), int(self.first[r + 1])
            out.append(
                ReadBlock(
                    shard=int(self.shard[r]),
                    offset=int(self.offset[r]),
                    length=int(self.length[r]),
                    slots=tuple(self.slots[a:b].tolist()),
                    ids=tuple(self.ids[a:b].tolist()),
                    starts=tuple(self.starts[a:b].tolist()),
                    lengths=tuple(self.lengths[a:b].tolist()),
                )
            )
        return tuple(out)


@dataclass(frozen=True)
class IOSummary:
    """Totals of a read plan.

    Attributes:
        bytes_read: Bytes the units read (samples plus gaps).
        sample_bytes: Bytes of the samples they serve.
        gap_bytes: Bytes read between samples and discarded.
        requests: Range requests.
        units: Read units.
        samples: Slots served.
    """

    bytes_read: int = 0
    sample_bytes: int = 0
    gap_bytes: int = 0
    requests: int = 0
    units: int = 0
    samples: int = 0


class ReadPlan(Sequence[ReadUnit]):
    """The read units of an epoch (or of its remainder), as arrays; see the module rules.

    Indexing or iterating makes :class:`ReadUnit` objects on demand.
    """

    def __init__(
        self,
        slots: np.ndarray,
        ids: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        req_shard: np.ndarray,
        req_offset: np.ndarray,
        req_length: np.ndarray,
        req_first: np.ndarray,
        unit_first: np.ndarray,
    ) -> None:
        self.slots, self.ids, self.starts, self.lengths = slots, ids, starts, lengths
        self.req_shard, self.req_offset, self.req_length, self.req_first = req_shard, req_offset, req_length, req_first
        self.unit_first = unit_first

    def __len__(self) -> int:
        return int(self.unit_first.size) - 1

    @overload
    def __getitem__(self, u: int) -> ReadUnit: ...

    @overload
    def __getitem__(self, u: slice) -> list[ReadUnit]: ...

    def __getitem__(self, u: int | slice) -> ReadUnit | list[ReadUnit]:
        if isinstance(u, slice):
            return [self[i] for i in range(*u.indices(len(self)))]
        n = len(self)
        if not -n <= u < n:
            raise IndexError(f"unit {u} is outside 0..{n - 1}")
        u %= n
        r0, r1 = int(self.unit_first[u]), int(self.unit_first[u + 1])
        s0, s1 = int(self.req_first[r0]), int(self.req_first[r1])
        return ReadUnit(
            index=u,
            shard=self.req_shard[r0:r1],
            offset=self.req_offset[r0:r1],
            length=self.req_length[r0:r1],
            first=self.req_first[r0 : r1 + 1] - s0,
            slots=self.slots[s0:s1],
            ids=self.ids[s0:s1],
            starts=self.starts[s0:s1],
            lengths=self.lengths[s0:s1],
        )

    def __iter__(self) -> Iterator[ReadUnit]:
        return (self[u] for u in range(len(self)))

    def summary(self) -> IOSummary:
        """Totals, computed from the arrays (no unit is made)."""
        bytes_read = int(self.req_length.sum())
        sample_bytes = int(self.lengths.sum())
        return IOSummary(
            bytes_read=bytes_read,
            sample_bytes=sample_bytes,
            gap_bytes=bytes_read - sample_bytes,
            requests=int(self.req_length.size),
            units=len(self),
            samples=int(self.slots.size),
        )


def plan_reads(
    slots: np.ndarray,
    ids: np.ndarray,
    shard: np.ndarray,
    offset: np.ndarray,
    length: np.ndarray,
    *,
    max_gap: int,
    max_block: int,
    gap_budget: float = 0.0,
    cost: CostModel | None = None,
    max_request: int | None = None,
) -> ReadPlan:
    """Group ``slots`` (in read order) into read units of range requests.

    Args:
        slots: int[S] slot indices, in read order.
        ids: int[S] sample id of each slot.
        shard: int[N] manifest shard column.
        offset: int[N] manifest offset column.
        length: int[N] manifest length column.
        max_gap: Largest gap in bytes always read through (>= 0).
        max_block: Largest unit in bytes (>= 1); a single larger sample is still read
            whole, as a unit of its own.
        gap_budget: Further gaps read through, smallest first, as a fraction of the
            planned samples' bytes (>= 0; default 0: none).
        cost: Request latency and bandwidth; limits the budget to gaps below the
            break-even gap and sets the request size (default None: no limit, requests
            up to ``max_block``).
        max_request: Largest request in bytes (>= 1; default: ``cost.request_bytes``,
            or ``max_block`` without a cost model).

    Returns:
        The read plan, in read order.

    Raises:
        ConfigError: if an argument is out of range.
    """
    max_gap = check_int("max_gap", max_gap, 0)
    max_block = check_int("max_block", max_block, 1)
    gap_budget = check_float("gap_budget", gap_budget, 0, fix="a fraction of the planned bytes; 0 disables it")
    if cost is not None and not isinstance(cost, CostModel):
        raise ConfigError(f"cost={cost!r} must be a shardprune.costmodel.CostModel or None")
    if max_request is None:
        max_request = max_block if cost is None else cost.request_bytes(max_block)
    cap = min(max_block, check_int("max_request", max_request, 1))

    slots = np.asarray(slots, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    sh = np.asarray(shard)[ids].astype(np.int64, copy=False)
    off = np.asarray(offset)[ids].astype(np.int64, copy=False)
    ln = np.asarray(length)[ids].astype(np.int64, copy=False)
    end = off + ln
    n = int(ids.size)

    limit = None if cost is None else cost.break_even_gap
    bridge = _bridgeable(sh, off, end, max_gap, gap_budget, limit, int(ln.sum()))
    run_start = np.flatnonzero(~bridge)
    run_stop = np.r_[run_start[1:], n].astype(np.int64)
    req_start = _split_runs(off, end, run_start, run_stop, cap)
    req_stop = np.r_[req_start[1:], n].astype(np.int64)
    req_offset = off[req_start]
    req_length = end[req_stop - 1] - req_offset if n else np.zeros(0, np.int64)
    unit_first = _group_units(req_length, max_block)

    req_of_sample = np.repeat(np.arange(req_start.size), req_stop - req_start)
    return ReadPlan(
        slots=slots,
        ids=ids,
        starts=off - req_offset[req_of_sample],
        lengths=ln,
        req_shard=sh[req_start],
        req_offset=req_offset,
        req_length=req_length,
        req_first=np.r_[req_start, n].astype(np.int64),
        unit_first=unit_first,
    )


def _bridgeable(
    sh: np.ndarray, off: np.ndarray, end: np.ndarray, max_gap: int, gap_budget: float, limit: int | None, total: int
) -> np.ndarray:
    """bool[S]: may the gap before position k be read through (rules 1-3)? False at k = 0."""
    n = int(sh.size)
    ok = np.zeros(n, dtype=bool)
    if n < 2:
        return ok
    gap = np.full(n, -1, dtype=np.int64)
    gap[1:] = off[1:] - end[:-1]
    gap[1:][sh[1:] != sh[:-1]] = -1
    ok = (gap >= 0) & (gap <= max_gap)
    if gap_budget > 0:
        wanted = gap > max_gap
        if limit is not None:
            wanted &= gap < limit
        extra = np.flatnonzero(wanted)
        if extra.size:
            order = extra[np.argsort(gap[extra], kind="stable")]
            take = int(np.searchsorted(np.cumsum(gap[order]), gap_budget * float(total), side="right"))
            ok[order[:take]] = True
    ok[0] = False
    return ok


def _split_runs(off: np.ndarray, end: np.ndarray, run_start: np.ndarray, run_stop: np.ndarray, cap: int) -> np.ndarray:
    """Positions where a request starts (rule 4); ``end`` is non-decreasing within a run.

    All runs longer than ``cap`` advance together, one request per step: a step is one
    ``searchsorted`` over a key that is non-decreasing across the runs (each run's ends,
    relative to its start, lifted above the previous run's), so steps number the most
    requests of one run, not the requests of the epoch.
    """
    run_start = run_start.astype(np.int64)
    if run_start.size == 0:
        return run_start
    span = end[run_stop - 1] - off[run_start]
    long = np.flatnonzero(span > cap)
    if long.size == 0:
        return run_start
    ls, counts = run_start[long], (run_stop - run_start)[long]
    cstart = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
    pos = np.repeat(ls - cstart, counts) + np.arange(int(counts.sum()), dtype=np.int64)
    run_of = np.repeat(np.arange(long.size), counts)
    base = np.r_[0, np.cumsum(span[long] + cap + 1)[:-1]].astype(np.int64)
    origin = off[ls]
    key = end[pos] - origin[run_of] + base[run_of]
    stop = cstart + counts
    frontier = cstart.copy()
    active = np.arange(long.size)
    found: list[np.ndarray] = []
    while active.size:
        f = frontier[active]
        target = off[pos[f]] - origin[active] + base[active] + cap
        nxt = np.maximum(np.searchsorted(key, target, side="right"), f + 1)
        more = nxt < stop[active]
        found.append(pos[nxt[more]])
        frontier[active] = nxt
        active = active[more]
    return np.sort(np.concatenate([run_start, *found])).astype(np.int64)


def _group_units(req_length: np.ndarray, max_block: int) -> np.ndarray:
    """int64[U + 1]: request index where each unit starts, then the request count (rule 5).

    One bisection per unit on the cumulative request sizes.
    """
    total = int(req_length.size)
    cum = np.cumsum(req_length).tolist()
    starts: list[int] = []
    r = 0
    while r < total:
        starts.append(r)
        r = max(r + 1, bisect.bisect_right(cum, (cum[r - 1] if r else 0) + max_block, r))
    return np.asarray(starts + [total], dtype=np.int64)


def summarize(units: ReadPlan | Iterable[ReadUnit]) -> IOSummary:
    """Totals of a read plan (or of any read units)."""
    if isinstance(units, ReadPlan):
        return units.summary()
    bytes_read = sample_bytes = requests = samples = count = 0
    for u in units:
        count += 1
        bytes_read += u.nbytes
        sample_bytes += int(u.lengths.sum())
        requests += u.requests
        samples += int(u.slots.size)
    return IOSummary(
        bytes_read=bytes_read,
        sample_bytes=sample_bytes,
        gap_bytes=bytes_read - sample_bytes,
        requests=requests,
        units=count,
        samples=samples,
    )
