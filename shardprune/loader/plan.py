"""The epoch plan: which samples this rank reads, in which order, as a pure function.

Nothing here reads a byte, a clock, a PID or a global RNG. The plan is a function of
``(seed, epoch, keep, weights, manifest shard/offset columns, world, batch_size,
shuffle, shuffle_window, shuffle_buffer, shuffle_block, drop_last)``; the same arguments always give the same
arrays, on every machine. Worker count is deliberately *not* an input: workers only
share the reading of the plan's read units, and the loader puts results back in plan
order, so the sample order is the same with 0, 1 or N workers.

How the order is built:

1. **Global sequence.** The shuffle mode (:mod:`shardprune.loader.shuffle`, chosen by
   ``PlanConfig.shuffle``: ``"window"``, ``"block"`` or ``"global"``) orders the T kept
   samples. ``"window"`` (a locality-preserving shuffle in the spirit of wids/MosaicML)
   permutes the shards by a Philox stream ``(PURPOSE_SHARDS, epoch)`` and reads groups of
   ``shuffle_window`` shards round-robin, ``run = ceil(shuffle_buffer / shuffle_window)``
   consecutive kept samples of a shard per turn, each shard in ascending byte offset.
   ``"block"`` permutes blocks of ``shuffle_block`` adjacent kept samples; ``"global"`` is a
   uniform permutation of the kept samples.
2. **Read order and yield order** of each rank's slice come from the mode's local step:
   ``"window"`` and ``"block"`` read the slice in sequence order and yield it through the
   shuffle buffer (step 4); ``"global"`` yields the sequence as it is and reads each chunk
   of ``shuffle_buffer`` slots in (shard, offset) order.
3. **Rank split.** The global sequence over the T kept samples is cut into
   ``world_size`` contiguous slices: rank r gets ``T // W + (r < T % W)`` slots. The
   slices are disjoint and their union is the kept set.
4. **Sample shuffle buffer** (``"window"``, ``"block"``). Each rank's slots pass through a buffer of
   ``shuffle_buffer`` slots (Philox counter ``(PURPOSE_BUFFER, epoch, rank)``): once the
   buffer is full, each incoming slot replaces a uniformly drawn resident, which is
   emitted; the remainder is emitted in a random permutation. A sample is therefore read
   at most ``shuffle_buffer`` positions before it is yielded, which bounds memory. The
   buffer is computed without a Python loop (:func:`~shardprune.loader.shuffle.buffer_shuffle`).
5. **Equal batches on every rank** (unequal counts hang DDP):

   * ``drop_last=True``: every rank yields ``(T // W) // B`` full batches; its emitted
     order is cut after ``batches * B`` positions. The cut samples are *trimmed*: they
     are never read and are counted in :attr:`EpochPlan.trimmed`.
   * ``drop_last=False``: every rank yields ``ceil(T / W)`` samples in
     ``ceil(ceil(T / W) / B)`` batches (the last one possibly short, the same length on
     every rank). A rank with ``T // W`` slots appends one *pad* slot repeating the first
     sample of its own slice (the next rank's first sample if its slice is empty) with
     weight 0, so gradients stay unbiased. Pads are counted in :attr:`EpochPlan.padded`.

Slots, not sample ids, are the unit of the plan: a padded sample is a second slot with
the same id. Resume positions count slots of the yield order (``order``), never
yielded samples, so they survive pruning and filtering.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from shardprune.errors import ConfigError
from shardprune.loader.shuffle import SHUFFLES, ShuffleParams, file_positions, get_shuffle
from shardprune.validate import check_bool, check_choice, check_int

#: Shuffle mode of a :class:`PlanConfig` built without one (the loader picks its own default,
#: see :func:`shardprune.loader.shuffle.default_shuffle`).
DEFAULT_SHUFFLE = "window"
#: Adjacent kept samples per block of the ``"block"`` mode.
DEFAULT_SHUFFLE_BLOCK = 12


@dataclass(frozen=True)
class PlanConfig:
    """The static inputs of every epoch plan.

    Attributes:
        seed: Philox key, ``0 <= seed < 2**128``.
        batch_size: Samples per batch (>= 1).
        rank: This rank, ``0 <= rank < world_size``.
        world_size: Number of ranks (>= 1).
        shuffle_window: Shards per window (>= 1); 1 reads shard by shard.
        shuffle_buffer: Slots in the sample shuffle buffer (>= 1); 1 disables sample shuffling.
        drop_last: Equal-batches rule; see the module docstring.
        shuffle: Shuffle mode name, one of :data:`shardprune.loader.shuffle.SHUFFLES`.
        shuffle_block: Adjacent kept samples per block of the ``"block"`` mode (>= 1).
    """

    seed: int
    batch_size: int
    rank: int = 0
    world_size: int = 1
    shuffle_window: int = 4
    shuffle_buffer: int = 1024
    drop_last: bool = True
    shuffle: str = DEFAULT_SHUFFLE
    shuffle_block: int = DEFAULT_SHUFFLE_BLOCK

    def __post_init__(self) -> None:
        for name in ("batch_size", "world_size", "shuffle_window", "shuffle_buffer", "shuffle_block"):
            check_int(name, getattr(self, name), 1)
        check_int("rank", self.rank, 0, self.world_size - 1, fix="pass the rank of this process in 0..world_size-1")
        check_int("seed", self.seed, 0, 2**128 - 1)
        check_bool("drop_last", self.drop_last)
        check_choice("shuffle", self.shuffle, tuple(sorted(SHUFFLES)))

    @property
    def shuffle_params(self) -> ShuffleParams:
        """The parameters the shuffle mode reads."""
        return ShuffleParams(window=self.shuffle_window, buffer=self.shuffle_buffer, block=self.shuffle_block)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's plan for one epoch.

    Attributes:
        epoch: The epoch planned.
        slot_ids: int64[S], sample id of each slot of this rank, in read order.
        slot_weights: float32[S], loss weight of each slot (0 for pads).
        slot_padded: bool[S], True for pad slots.
        order: int64[P], slot indices in yield order; ``P = num_samples``.
        num_batches: Batches every rank yields this epoch.
        batch_size: Samples per full batch.
        kept_total: T, kept samples over all ranks.
        trimmed: Kept samples of this rank dropped by the equal-batches rule (never read).
        padded: Pad slots of this rank (read and yielded with weight 0).
        rank: The rank planned for.
    """

    epoch: int
    slot_ids: np.ndarray
    slot_weights: np.ndarray
    slot_padded: np.ndarray
    order: np.ndarray
    num_batches: int
    batch_size: int
    kept_total: int
    trimmed: int
    padded: int
    rank: int

    @property
    def num_samples(self) -> int:
        """Samples this rank yields in the epoch (pads included)."""
        return int(self.order.shape[0])

    def ids(self) -> np.ndarray:
        """int64[P]: the sample ids in yield order."""
        return self.slot_ids[self.order]

    def batch_slots(self, b: int) -> np.ndarray:
        """Slot indices of batch ``b``."""
        return self.order[b * self.batch_size : (b + 1) * self.batch_size]

    def fingerprint(self) -> str:
        """Hex digest of the yield order and weights (what resume must reproduce)."""
        h = hashlib.blake2b(digest_size=16)
        for arr in (self.slot_ids[self.order], self.slot_weights[self.order]):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(f"{self.epoch}:{self.num_batches}:{self.batch_size}".encode())
        return h.hexdigest()


def read_order(
    keep: np.ndarray, shard: np.ndarray, offset: np.ndarray, num_shards: int, cfg: PlanConfig, epoch: int
) -> np.ndarray:
    """The global sequence of the kept samples (step 1 of the module docstring).

    Args:
        keep: bool[N] keep decision.
        shard: int[N] shard index of each sample.
        offset: int[N] byte offset of each sample in its shard.
        num_shards: Number of shards.
        cfg: Plan configuration.
        epoch: Epoch number (>= 0).

    Returns:
        int64[T], sample ids in global sequence order (the rank split cuts it in slices).
    """
    kept = np.flatnonzero(np.asarray(keep, dtype=bool)).astype(np.int64)
    mode = get_shuffle(cfg.shuffle)
    shard_a, offset_a = np.asarray(shard), np.asarray(offset)
    return mode.sequence(kept, shard_a, offset_a, num_shards, cfg.seed, epoch, cfg.shuffle_params).astype(np.int64)


def make_plan(
    keep: np.ndarray,
    weights: np.ndarray,
    shard: np.ndarray,
    offset: np.ndarray,
    num_shards: int,
    cfg: PlanConfig,
    epoch: int,
) -> EpochPlan:
    """Plan one epoch for ``cfg.rank`` (see the module docstring for every rule).

    Args:
        keep: bool[N], the policy's keep decision.
        weights: float32[N], the policy's weights (read for kept samples only).
        shard: int[N], manifest shard column.
        offset: int[N], manifest offset column.
        num_shards: Number of shards in the dataset.
        cfg: Plan configuration.
        epoch: Epoch number (>= 0).

    Returns:
        The rank's :class:`EpochPlan`.

    Raises:
        ConfigError: if array lengths disagree or ``epoch`` is negative.
    """
    n = len(keep)
    if not (len(weights) == len(shard) == len(offset) == n):
        raise ConfigError(
            f"keep/weights/shard/offset lengths differ: {len(keep)}, {len(weights)}, {len(shard)}, {len(offset)}"
        )
    epoch = check_int("epoch", epoch, 0)
    glob = read_order(keep, shard, offset, num_shards, cfg, epoch)
    total = int(glob.size)
    w, r, b = cfg.world_size, cfg.rank, cfg.batch_size
    base, extra = divmod(total, w)
    start = r * base + min(r, extra)
    size = base + (1 if r < extra else 0)
    ids = glob[start : start + size]
    mode = get_shuffle(cfg.shuffle)
    file_pos = file_positions(np.asarray(shard), np.asarray(offset))[ids] if mode.needs_file_pos else ids[:0]
    read, order = mode.local(size, cfg.seed, epoch, r, cfg.shuffle_params, file_pos)
    ids = ids[read]
    padded = 0
    slot_padded = np.zeros(size, dtype=bool)
    if cfg.drop_last:
        num_batches = base // b
        count = num_batches * b
        trimmed = size - count
        order = order[:count]
    else:
        count = base + (1 if extra else 0)
        num_batches = -(-count // b)
        trimmed = 0
        padded = count - size
        if padded and total:
            pad_ids = glob[(start + np.arange(padded)) % total]
            ids = np.concatenate([ids, pad_ids])
            slot_padded = np.concatenate([slot_padded, np.ones(padded, dtype=bool)])
            order = np.concatenate([order, np.arange(size, size + padded, dtype=np.int64)])
    slot_weights = np.asarray(weights, dtype=np.float32)[ids].copy()
    slot_weights[slot_padded] = 0.0
    return EpochPlan(
        epoch=epoch,
        slot_ids=ids.astype(np.int64),
        slot_weights=slot_weights,
        slot_padded=slot_padded,
        order=order.astype(np.int64),
        num_batches=int(num_batches),
        batch_size=b,
        kept_total=total,
        trimmed=int(trimmed),
        padded=int(padded),
        rank=r,
    )
