"""Shuffle quality and I/O cost of loader settings, from the manifest alone (no sample byte is read).

For a dataset and loader settings, :func:`shuffle_report` plans one epoch for every rank
exactly as the loader would (:func:`~shardprune.loader.plan.make_plan`) and the range reads
that serve it (:func:`~shardprune.loader.ioplan.plan_reads`), then measures:

1. **Distinct labels per batch** (mean over every full batch of every rank) and the same for
   a uniform shuffle: the exact expectation for a batch drawn uniformly without replacement
   from the kept samples, ``sum_c 1 - C(T - n_c, b) / C(T, b)`` (T kept samples, n_c of
   class c, batch b).
2. **Batch label entropy** in bits (mean over batches) and the same for a uniform shuffle,
   measured on the ``"global"`` mode's plan of the same epoch (a uniform permutation).
3. **Requests per epoch** (range requests of all ranks) and **bytes read per kept byte**,
   with the I/O planner's settings for the storage kind.

Like MosaicML Streaming's shuffle simulator, this answers "how well will my batches be
mixed, and what will it cost?" before a single byte is read.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shardprune.dataset import ShardedDataset, open_dataset
from shardprune.errors import ConfigError
from shardprune.format.manifest import NO_LABEL
from shardprune.loader.ioplan import plan_reads, summarize
from shardprune.loader.plan import DEFAULT_SHUFFLE_BLOCK, EpochPlan, PlanConfig, make_plan
from shardprune.loader.shuffle import SHUFFLES, default_shuffle, is_preshuffled
from shardprune.loader.options import (
    DEFAULT_MAX_BLOCK,
    LOCAL_GAP_BUDGET,
    LOCAL_MAX_GAP,
    REMOTE_GAP_BUDGET,
    REMOTE_MAX_GAP,
)
from shardprune.policies.rng import philox
from shardprune.validate import check_choice, check_float, check_int

#: Philox purpose word of the report's random keep draw (``keep_fraction < 1``).
PURPOSE_REPORT_KEEP = 105
#: Storage kinds and the loader's defaults for each (one source of truth: the loader's constants).
STORAGE_KINDS = ("local", "remote")
_IO_DEFAULTS: dict[str, dict[str, Any]] = {
    "local": {"max_gap": LOCAL_MAX_GAP, "gap_budget": LOCAL_GAP_BUDGET},
    "remote": {"max_gap": REMOTE_MAX_GAP, "gap_budget": REMOTE_GAP_BUDGET},
}


@dataclass(frozen=True)
class ShuffleReport:
    """Quality and cost of one epoch under one set of loader settings.

    Attributes:
        shuffle: The shuffle mode.
        storage: ``"local"`` or ``"remote"`` (which I/O defaults were used).
        world_size: Ranks.
        batch_size: Samples per batch and rank.
        batches: Full batches measured (all ranks).
        kept: Kept samples T.
        distinct_labels: Mean distinct labels per batch.
        distinct_labels_uniform: Expected distinct labels per batch of a uniform shuffle.
        entropy_bits: Mean batch label entropy in bits.
        entropy_bits_uniform: The same for the ``"global"`` (uniform) plan of the epoch.
        requests: Range requests per epoch, all ranks.
        bytes_read: Bytes the requests read, all ranks.
        kept_bytes: Bytes of the planned samples, all ranks.
    """

    shuffle: str
    storage: str
    world_size: int
    batch_size: int
    batches: int
    kept: int
    distinct_labels: float
    distinct_labels_uniform: float
    entropy_bits: float
    entropy_bits_uniform: float
    requests: int
    bytes_read: int
    kept_bytes: int

    @property
    def quality(self) -> float:
        """Distinct labels per batch as a fraction of a uniform shuffle's."""
        return self.distinct_labels / self.distinct_labels_uniform if self.distinct_labels_uniform else 1.0

    @property
    def read_per_kept(self) -> float:
        """Bytes read per byte of the planned samples."""
        return self.bytes_read / self.kept_bytes if self.kept_bytes else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, with ``quality`` and ``read_per_kept``."""
        return {**asdict(self), "quality": self.quality, "read_per_kept": self.read_per_kept}

    def row(self) -> str:
        """One Markdown table row (see :data:`TABLE_HEADER`)."""
        return (
            f"| {self.shuffle} | {self.storage} | {self.distinct_labels:.1f} | {self.distinct_labels_uniform:.1f} | "
            f"{self.quality:.2f} | {self.entropy_bits:.2f} | {self.entropy_bits_uniform:.2f} | "
            f"{self.requests:,} | {self.read_per_kept:.3f} |"
        )


TABLE_HEADER = (
    "| shuffle | storage | distinct labels / batch | uniform | x uniform | entropy bits | uniform | "
    "requests / epoch | bytes read / kept |\n|---|---|---|---|---|---|---|---|---|"
)


def batch_label_stats(labels: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct labels and label entropy (bits) of each full batch of ``labels`` (yield order)."""
    rows = labels.size // batch_size
    if rows == 0:
        return np.zeros(0), np.zeros(0)
    batch = np.sort(labels[: rows * batch_size].reshape(rows, batch_size), axis=1)
    new = np.ones_like(batch, dtype=bool)
    new[:, 1:] = batch[:, 1:] != batch[:, :-1]
    distinct = new.sum(axis=1)
    # Run lengths of equal labels inside each sorted row are the class counts.
    flat_new = np.flatnonzero(new.ravel())
    counts = np.diff(np.r_[flat_new, batch.size])
    p = counts / batch_size
    entropy = np.zeros(rows)
    np.add.at(entropy, flat_new // batch_size, -p * np.log2(p))
    return distinct.astype(np.float64), entropy


def uniform_distinct(class_counts: np.ndarray, batch_size: int) -> float:
    """Expected distinct classes in ``batch_size`` draws without replacement from the counts."""
    total = int(class_counts.sum())
    b = min(batch_size, total)
    if b == 0:
        return 0.0

    def log_choose(n: int, k: int) -> float:
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)

    base = log_choose(total, b)
    miss = 0.0
    for c in class_counts.tolist():
        if c and total - c >= b:
            miss += math.exp(log_choose(total - c, b) - base)
    return float(np.count_nonzero(class_counts)) - miss


def _plans(keep: np.ndarray, shard: np.ndarray, offset: np.ndarray, num_shards: int, cfg: dict[str, Any],
           world: int, epoch: int) -> list[EpochPlan]:
    weights = np.ones(keep.size, dtype=np.float32)
    return [
        make_plan(keep, weights, shard, offset, num_shards, PlanConfig(rank=r, world_size=world, **cfg), epoch)
        for r in range(world)
    ]


def manifest_report(
    labels: np.ndarray,
    shard: np.ndarray,
    offset: np.ndarray,
    length: np.ndarray,
    num_shards: int,
    *,
    batch_size: int,
    world_size: int = 1,
    storage: str = "local",
    shuffle: str | None = None,
    shuffle_window: int = 4,
    shuffle_buffer: int = 1024,
    shuffle_block: int = DEFAULT_SHUFFLE_BLOCK,
    seed: int = 0,
    epoch: int = 0,
    keep_fraction: float = 1.0,
    max_gap: int | None = None,
    gap_budget: float | None = None,
    max_block: int = DEFAULT_MAX_BLOCK,
    preshuffled: bool = False,
) -> ShuffleReport:
    """:func:`shuffle_report` on manifest columns (for simulated layouts).

    Args:
        labels, shard, offset, length: int[N] manifest columns.
        num_shards: Shards in the dataset.
        storage: ``"local"`` or ``"remote"``: the default shuffle mode and I/O settings.
        keep_fraction: Fraction of samples kept, drawn uniformly (Philox, purpose
            :data:`PURPOSE_REPORT_KEEP`); 1 keeps everything.
        preshuffled: The converter wrote the samples in a seeded permutation (the header's
            ``source.order``); only the default ``shuffle`` depends on it.
        Others: as :class:`~shardprune.loader.streaming.StreamingLoader`.

    Raises:
        ConfigError: a setting is out of range, or the dataset has no labels.
    """
    storage = check_choice("storage", storage, STORAGE_KINDS)
    defaults = _IO_DEFAULTS[storage]
    default = default_shuffle(bool(preshuffled), storage == "local")
    mode = check_choice("shuffle", default if shuffle is None else shuffle, tuple(sorted(SHUFFLES)))
    world = check_int("world_size", world_size, 1)
    fraction = check_float("keep_fraction", keep_fraction, 0.0, 1.0, low_open=True)
    gap = check_int("max_gap", defaults["max_gap"] if max_gap is None else max_gap, 0)
    budget = check_float("gap_budget", defaults["gap_budget"] if gap_budget is None else gap_budget, 0.0, 10.0)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and bool(np.all(labels == NO_LABEL)):
        raise ConfigError("the dataset has no labels; a shuffle-quality report counts labels per batch")
    n = labels.size
    keep = np.ones(n, dtype=bool)
    if fraction < 1.0:
        keep = philox(seed, PURPOSE_REPORT_KEEP, epoch).random(n) < fraction
    cfg = dict(seed=seed, batch_size=batch_size, shuffle_window=shuffle_window, shuffle_buffer=shuffle_buffer,
               shuffle_block=shuffle_block)
    plans = _plans(keep, shard, offset, num_shards, {**cfg, "shuffle": mode}, world, epoch)
    uniform = plans if mode == "global" else _plans(keep, shard, offset, num_shards, {**cfg, "shuffle": "global"},
                                                    world, epoch)
    distinct = [batch_label_stats(labels[p.ids()], batch_size) for p in plans]
    entropy_u = np.concatenate([batch_label_stats(labels[p.ids()], batch_size)[1] for p in uniform])
    requests = bytes_read = kept_bytes = 0
    for p in plans:
        slots = np.sort(p.order)
        io = summarize(plan_reads(slots, p.slot_ids[slots], shard, offset, length, max_gap=gap,
                                  max_block=max_block, gap_budget=budget))
        requests += io.requests
        bytes_read += io.bytes_read
        kept_bytes += io.sample_bytes
    d = np.concatenate([x for x, _ in distinct])
    e = np.concatenate([y for _, y in distinct])
    kept_labels = labels[keep]
    return ShuffleReport(
        shuffle=mode,
        storage=storage,
        world_size=world,
        batch_size=batch_size,
        batches=int(d.size),
        kept=int(keep.sum()),
        distinct_labels=float(d.mean()) if d.size else 0.0,
        distinct_labels_uniform=uniform_distinct(np.unique(kept_labels, return_counts=True)[1], batch_size),
        entropy_bits=float(e.mean()) if e.size else 0.0,
        entropy_bits_uniform=float(entropy_u.mean()) if entropy_u.size else 0.0,
        requests=requests,
        bytes_read=bytes_read,
        kept_bytes=kept_bytes,
    )


def shuffle_report(
    dataset: ShardedDataset | str | os.PathLike[str],
    *,
    batch_size: int,
    world_size: int = 1,
    storage: str | None = None,
    storage_options: dict[str, Any] | None = None,
    **settings: Any,
) -> ShuffleReport:
    """Shuffle quality and I/O cost of one epoch of ``dataset`` under loader settings.

    Reads the header and manifest only. The plan is the loader's own, so the numbers are
    those a :class:`~shardprune.loader.streaming.StreamingLoader` with the same settings
    would produce (every rank's batches and range requests together).

    Args:
        dataset: A :class:`ShardedDataset` or its path / URL.
        batch_size: Samples per batch and rank.
        world_size: Ranks (default 1).
        storage: ``"local"`` or ``"remote"`` I/O defaults (default: the dataset's kind).
        storage_options: fsspec options when ``dataset`` is a remote URL.
        **settings: ``shuffle``, ``shuffle_window``, ``shuffle_buffer``, ``shuffle_block``,
            ``seed``, ``epoch``, ``keep_fraction``, ``max_gap``, ``gap_budget``, ``max_block``
            (see :func:`manifest_report`).

    Returns:
        The :class:`ShuffleReport`.
    """
    ds = dataset if isinstance(dataset, ShardedDataset) else open_dataset(dataset, storage_options)
    kind = ("local" if ds.storage.is_local else "remote") if storage is None else storage
    m = ds.manifest
    return manifest_report(
        m.label, m.shard, m.offset, m.length, len(ds.header.shards),
        batch_size=batch_size, world_size=world_size, storage=kind,
        preshuffled=is_preshuffled(ds.header.source), **settings,
    )  # fmt: skip
