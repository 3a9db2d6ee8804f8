"""Shuffle modes of the epoch plan: pure, vectorised functions and a name -> mode registry.

A mode turns the kept samples into an epoch order in two steps, both numpy-only (no
Python loop per sample, block or shard):

1. ``sequence(kept, shard, offset, num_shards, seed, epoch, params)`` -> the *global
   sequence* of the T kept sample ids. The plan cuts it into ``world_size`` contiguous
   slices, one per rank.
2. ``local(n, seed, epoch, rank, params, file_pos)`` -> ``(read, order)`` for one rank's
   slice of n samples (``file_pos``: each sample's position in (shard, offset) order): ``read`` permutes the slice into the order it is read in,
   ``order`` lists read positions in yield order. A sample is read at most about
   ``params.buffer`` positions before it is yielded, which bounds the samples the loader
   holds.

The modes and what they cost (T kept samples, B = ``shuffle_buffer``, k = ``shuffle_block``):

* ``"window"``: today's locality-preserving shuffle (wids/MosaicML style). Shards are
  permuted; groups of ``shuffle_window`` shards are read round-robin, each shard in
  ascending offset, and every rank's slice passes through a B-slot shuffle buffer.
  Reads are sequential within a shard, so one range request serves many samples; batches
  mix only the classes of a few shards (bad on class-sorted data).
* ``"block"``: the kept samples, in (shard, offset) order, are cut into blocks of k
  consecutive kept samples of one shard; the blocks are permuted globally and the slice
  passes through the B-slot buffer. About T / k requests where kept samples are adjacent
  (object storage: a request costs a round trip); a batch mixes about B / k blocks.
* ``"global"``: a uniform permutation of the kept samples (the per-sample byte index makes
  this affordable: one read per sample). The yield order is the permutation itself; each
  chunk of B consecutive slots is *read* in (shard, offset) order, so reads inside a chunk
  go forward through each file and adjacent kept samples of a chunk merge into one read.

Randomness: every draw is a Philox stream keyed by the seed, with purpose, epoch (and
rank for the per-rank buffer) in the counter (:func:`shardprune.policies.rng.philox`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardprune.errors import ConfigError
from shardprune.policies.rng import philox

#: Philox purpose words of the loader's streams (the policies use 1..5).
PURPOSE_SHARDS = 101
PURPOSE_BUFFER = 102
PURPOSE_BLOCKS = 103
PURPOSE_GLOBAL = 104


@dataclass(frozen=True)
class ShuffleParams:
    """The mode parameters a plan configuration carries.

    Attributes:
        window: Shards read round-robin at once (``"window"`` mode).
        buffer: Shuffle buffer / read chunk in slots.
        block: Adjacent kept samples per block (``"block"`` mode).
    """

    window: int
    buffer: int
    block: int


#: ``sequence(kept, shard, offset, num_shards, seed, epoch, params) -> int64[T] ids``.
SequenceFn = Callable[[np.ndarray, np.ndarray, np.ndarray, int, int, int, ShuffleParams], np.ndarray]
#: ``local(n, seed, epoch, rank, params, file_pos_of_slice) -> (read, order)``.
LocalFn = Callable[[int, int, int, int, ShuffleParams, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ShuffleMode:
    """One registered mode: its global sequence and its per-rank read/yield step.

    Attributes:
        name: Registry name.
        sequence: The global sequence function.
        local: The per-rank read/yield function.
        needs_file_pos: Whether ``local`` reads ``file_pos`` (others get an empty array).
    """

    name: str
    sequence: SequenceFn
    local: LocalFn
    needs_file_pos: bool = False


def _shard_positions(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    perm = philox(seed, PURPOSE_SHARDS, epoch).permutation(num_shards)
    pos = np.empty(num_shards, dtype=np.int64)
    pos[perm] = np.arange(num_shards, dtype=np.int64)
    return pos


def _runs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of the runs of equal values of a sorted ``key``, and each element's index in its run."""
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, key.size])
    return counts, np.arange(key.size, dtype=np.int64) - np.repeat(starts, counts)


def _file_order(kept: np.ndarray, shard: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``kept`` sorted by (shard, offset); most manifests are already in that order."""
    sh, off = shard[kept], offset[kept]
    if kept.size < 2 or bool(np.all((sh[1:] > sh[:-1]) | ((sh[1:] == sh[:-1]) & (off[1:] >= off[:-1])))):
        return kept
    return kept[np.lexsort((off, sh))]


def _stable_by(key: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of a small non-negative int key (radix sort when it fits 16 bits)."""
    if bound <= np.iinfo(np.int16).max:
        return np.argsort(key.astype(np.int16), kind="stable")
    return np.argsort(key, kind="stable")


def window_sequence(
    kept: np.ndarray, shard: np.ndarray, offset: np.ndarray, num_shards: int, seed: int, epoch: int, p: ShuffleParams
) -> np.ndarray:
    """Shard windows read round-robin, ``ceil(buffer / window)`` samples per shard per turn."""
    if kept.size == 0:
        return kept
    shard_pos = _shard_positions(num_shards, seed, epoch)
    kept = _file_order(kept, shard, offset)
    kept = kept[_stable_by(shard_pos[shard[kept]], num_shards)]
    pos = shard_pos[shard[kept]]
    counts, within = _runs(pos)
    run = -(-p.buffer // p.window)
    # One composite key for (window, turn, shard position, within): every part is bounded,
    # so a single argsort replaces a four-key lexsort.
    turns = -(-int(counts.max()) // run)
    key = ((pos // p.window * turns + within // run) * p.window + pos % p.window) * run + within % run
    return kept[np.argsort(key)]


def block_sequence(
    kept: np.ndarray, shard: np.ndarray, offset: np.ndarray, num_shards: int, seed: int, epoch: int, p: ShuffleParams
) -> np.ndarray:
    """Blocks of ``block`` consecutive kept samples of one shard, in a global random order."""
    if kept.size == 0:
        return kept
    kept = _file_order(kept, shard, offset)
    counts, within = _runs(shard[kept])
    # Block number: blocks never straddle two shards (one block = one range request).
    per_shard = -(-counts // p.block)
    first = np.r_[0, np.cumsum(per_shard)[:-1]]
    block_of = np.repeat(first, counts) + within // p.block
    num_blocks = int(per_shard.sum())
    rank_of_block = np.empty(num_blocks, dtype=np.int64)
    rank_of_block[philox(seed, PURPOSE_BLOCKS, epoch).permutation(num_blocks)] = np.arange(num_blocks)
    # (block rank, position in block) is unique: one int64 key instead of a two-key lexsort.
    return kept[np.argsort(rank_of_block[block_of] * p.block + within % p.block)]


def global_sequence(
    kept: np.ndarray, shard: np.ndarray, offset: np.ndarray, num_shards: int, seed: int, epoch: int, p: ShuffleParams
) -> np.ndarray:
    """A uniform random permutation of the kept samples."""
    return kept[philox(seed, PURPOSE_GLOBAL, epoch).permutation(kept.size)]


def buffer_shuffle(n: int, buffer: int, gen: np.random.Generator) -> np.ndarray:
    """Yield order of n slots through a ``buffer``-slot shuffle buffer, without a Python loop.

    The buffer rule: once the buffer holds ``buffer`` slots, each incoming slot ``buffer + t``
    replaces the resident at a uniformly drawn position ``d[t]``, which is emitted; the
    residents left at the end are emitted in a random permutation. Step t therefore emits
    the slot written at position ``d[t]`` by the last earlier step with the same draw
    (slot ``buffer + t'``), or the initial resident ``d[t]`` if there is none: a "previous
    occurrence" lookup, done with one stable sort of the draws.

    Args:
        n: Slots to emit.
        buffer: Buffer size in slots.
        gen: The stream to draw from (consumed exactly as the sequential loop would).

    Returns:
        int64[n], the slots in yield order.
    """
    if buffer <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    steps = max(n - buffer, 0)
    draws = gen.integers(0, buffer, size=steps).astype(np.int64)
    resident = np.arange(min(buffer, n), dtype=np.int64)
    emitted = draws.copy()
    if steps:
        by_slot = _stable_by(draws, buffer)
        d = draws[by_slot]
        same = d[1:] == d[:-1]
        emitted[by_slot[1:][same]] = buffer + by_slot[:-1][same]
        last = np.r_[~same, True]
        resident[d[last]] = buffer + by_slot[last]
    tail = gen.permutation(resident.size)
    return np.concatenate([emitted, resident[tail]])


def buffered_local(
    n: int, seed: int, epoch: int, rank: int, p: ShuffleParams, file_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Read the slice in sequence order; yield it through the shuffle buffer."""
    return np.arange(n, dtype=np.int64), buffer_shuffle(n, p.buffer, philox(seed, PURPOSE_BUFFER, epoch, rank))


def chunk_sorted_local(
    n: int, seed: int, epoch: int, rank: int, p: ShuffleParams, file_pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Yield the slice in sequence order; read each chunk of ``buffer`` slots in file order."""
    chunk = np.arange(n, dtype=np.int64) // max(p.buffer, 1)
    # File positions are distinct, so (chunk, file position) as one int64 key sorts unstably.
    bound = int(file_pos.max()) + 1 if n else 1
    read = np.argsort(chunk * bound + file_pos).astype(np.int64)
    return read, _inverse(read)


def file_positions(shard: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """int64[N]: each sample's position in (shard, offset) order (its id, for most manifests)."""
    ids = np.arange(shard.size, dtype=np.int64)
    ordered = _file_order(ids, shard, offset)
    if ordered is ids:
        return ids
    return _inverse(ordered)


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


#: The registry: name -> mode. Validated by :func:`get_shuffle` when a plan is configured.
SHUFFLES: dict[str, ShuffleMode] = {
    "block": ShuffleMode("block", block_sequence, buffered_local),
    "global": ShuffleMode("global", global_sequence, chunk_sorted_local, needs_file_pos=True),
    "window": ShuffleMode("window", window_sequence, buffered_local),
}


#: Default modes (measured in benchmarks/results/shuffle.md). A dataset the converter wrote in a
#: seeded permutation is already mixed across shards, so the window order gives uniform-quality
#: batches with the fewest requests; an input-ordered (often class-sorted) one needs the
#: per-sample index: a uniform order locally, blocks of adjacent samples on object storage.
PRESHUFFLED_SHUFFLE = "window"
LOCAL_SHUFFLE = "global"
REMOTE_SHUFFLE = "block"


def is_preshuffled(source: dict[str, Any]) -> bool:
    """Whether a header ``source`` records the converter's permutation (``order.shuffled``)."""
    order = source.get("order") if isinstance(source, dict) else None
    return isinstance(order, dict) and order.get("shuffled") is True


def default_shuffle(preshuffled: bool, local: bool) -> str:
    """The default mode for a dataset the converter shuffled or not, stored locally or not."""
    if preshuffled:
        return PRESHUFFLED_SHUFFLE
    return LOCAL_SHUFFLE if local else REMOTE_SHUFFLE


def get_shuffle(name: str) -> ShuffleMode:
    """The registered mode ``name``.

    Raises:
        ConfigError: if ``name`` is not registered.
    """
    mode = SHUFFLES.get(name) if isinstance(name, str) else None
    if mode is None:
        raise ConfigError(f"shuffle={name!r} is not one of {', '.join(sorted(SHUFFLES))}; pass one of those names")
    return mode
