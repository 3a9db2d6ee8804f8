"""The I/O planner: turn the slots an epoch still needs into a few large range reads.

Slots are taken in the plan's *read order* (sequential within a shard). Consecutive
slots of one shard whose byte ranges are at most ``max_gap`` bytes apart are merged
into one *block* (one range request) as long as the block spans at most ``max_block``
bytes; the bytes between them are read and thrown away and counted as gap bytes (the
idea of fsspec's ``merge_offset_ranges``). Consecutive blocks are grouped into a
*read unit* of at most ``max_block`` bytes, the item a worker fetches; a unit's blocks
may be fetched concurrently (remote storage).

With ``max_gap=0`` only samples adjacent on disk are merged, so the bytes read equal
the bytes of the planned samples exactly (tar samples written back to back are
adjacent: a sample's range ends where the next one's header starts).

A *gap budget* bridges more gaps where a request costs more than the bytes it would
skip (object storage): gaps are bridged smallest first, in addition to those of at most
``max_gap`` bytes, while their total stays within ``gap_budget`` times the bytes of the
planned samples. Each bridged gap saves exactly one request, so smallest-first saves the
most requests for the bytes allowed; bytes read stay at most ``1 + gap_budget`` times
the planned bytes (plus the gaps under ``max_gap``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardprune.errors import ConfigError


@dataclass(frozen=True)
class ReadBlock:
    """One range request.

    Attributes:
        shard: Shard index.
        offset: First byte read.
        length: Bytes read.
        slots: Plan slots served by this block, in read order.
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


@dataclass(frozen=True)
class ReadUnit:
    """What one worker fetches at once: consecutive blocks, at most ``max_block`` bytes.

    Attributes:
        index: Position of the unit in the epoch's unit sequence.
        blocks: The unit's blocks, in read order.
    """

    index: int
    blocks: tuple[ReadBlock, ...]

    @property
    def nbytes(self) -> int:
        return sum(b.length for b in self.blocks)


@dataclass(frozen=True)
class IOSummary:
    """Totals of a list of read units.

    Attributes:
        bytes_read: Bytes the units read (samples plus gaps).
        sample_bytes: Bytes of the samples they serve.
        gap_bytes: Bytes read between samples and discarded.
        requests: Range requests (blocks).
        units: Read units.
        samples: Slots served.
    """

    bytes_read: int = 0
    sample_bytes: int = 0
    gap_bytes: int = 0
    requests: int = 0
    units: int = 0
    samples: int = 0


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
) -> list[ReadUnit]:
    """Group ``slots`` (in read order) into read units of merged blocks.

    Args:
        slots: int[S] slot indices, in read order.
        ids: int[S] sample id of each slot.
        shard: int[N] manifest shard column.
        offset: int[N] manifest offset column.
        length: int[N] manifest length column.
        max_gap: Largest gap in bytes bridged inside one block (>= 0).
        max_block: Largest block and unit span in bytes (>= 1); a single larger sample
            is still read whole, as a block of its own.
        gap_budget: Further gaps bridged, smallest first, as a fraction of the planned
            samples' bytes (>= 0; default 0: none).

    Returns:
        The read units in read order.

    Raises:
        ConfigError: if ``max_gap`` or ``max_block`` is out of range.
    """
    if max_gap < 0:
        raise ConfigError(f"max_gap={max_gap} must be >= 0 bytes")
    if max_block < 1:
        raise ConfigError(f"max_block={max_block} must be >= 1 byte")
    if not gap_budget >= 0:
        raise ConfigError(f"gap_budget={gap_budget} must be >= 0 (a fraction of the planned bytes; 0 disables it)")
    sh_a, off_a, ln_a = np.asarray(shard[ids]), np.asarray(offset[ids]), np.asarray(length[ids])
    bridge = _bridgeable(sh_a, off_a, ln_a, max_gap, gap_budget)
    sh, off, ln = sh_a.tolist(), off_a.tolist(), ln_a.tolist()
    slot_list = [int(s) for s in slots]
    id_list = [int(i) for i in ids]
    blocks: list[ReadBlock] = []
    cur: list[int] = []  # positions into the lists above
    block_start = block_end = 0

    def flush() -> None:
        if cur:
            blocks.append(
                ReadBlock(
                    shard=sh[cur[0]],
                    offset=block_start,
                    length=block_end - block_start,
                    slots=tuple(slot_list[k] for k in cur),
                    ids=tuple(id_list[k] for k in cur),
                    starts=tuple(off[k] - block_start for k in cur),
                    lengths=tuple(ln[k] for k in cur),
                )
            )
            cur.clear()

    for k in range(len(slot_list)):
        s, o, n = sh[k], off[k], ln[k]
        if (
            cur
            and s == sh[cur[0]]
            and bridge[k]
            and o + n - block_start <= max_block
        ):
            cur.append(k)
            block_end = o + n
            continue
        flush()
        cur.append(k)
        block_start, block_end = o, o + n
    flush()

    units: list[ReadUnit] = []
    group: list[ReadBlock] = []
    size = 0
    for blk in blocks:
        if group and size + blk.length > max_block:
            units.append(ReadUnit(len(units), tuple(group)))
            group, size = [], 0
        group.append(blk)
        size += blk.length
    if group:
        units.append(ReadUnit(len(units), tuple(group)))
    return units


def _bridgeable(sh: np.ndarray, off: np.ndarray, ln: np.ndarray, max_gap: int, gap_budget: float) -> list[bool]:
    """For each position k > 0: may the gap after position k - 1 be read through?

    True for gaps of at most ``max_gap`` bytes and for the smallest further gaps (ties
    by position) whose total fits in ``gap_budget`` times the samples' bytes. A sample
    in another shard, or before the previous one's end, never continues a block.
    """
    n = int(sh.size)
    if n == 0:
        return []
    gap = np.full(n, -1, dtype=np.int64)
    gap[1:] = off[1:] - (off[:-1] + ln[:-1])
    gap[1:][sh[1:] != sh[:-1]] = -1
    ok = (gap >= 0) & (gap <= max_gap)
    if gap_budget > 0:
        extra = np.flatnonzero(gap > max_gap)
        if extra.size:
            order = extra[np.argsort(gap[extra], kind="stable")]
            take = int(np.searchsorted(np.cumsum(gap[order]), gap_budget * float(ln.sum()), side="right"))
            ok[order[:take]] = True
    out: list[bool] = ok.tolist()
    return out


def summarize(units: list[ReadUnit]) -> IOSummary:
    """Totals of ``units``."""
    bytes_read = sample_bytes = requests = samples = 0
    for u in units:
        for b in u.blocks:
            bytes_read += b.length
            sample_bytes += sum(b.lengths)
            requests += 1
            samples += len(b.slots)
    return IOSummary(
        bytes_read=bytes_read,
        sample_bytes=sample_bytes,
        gap_bytes=bytes_read - sample_bytes,
        requests=requests,
        units=len(units),
        samples=samples,
    )
