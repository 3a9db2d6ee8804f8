"""The live score columns: folded into by the report thread, cut into blocks for a flush.

:class:`LiveColumns` is the one owner of the authoritative in-memory columns, of the
per-chunk dirty mask and of the lock that guards both. Every reader takes a copy
under the lock (:meth:`LiveColumns.take`), so nothing outside reaches into the live
arrays while the report thread folds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardprune.scores.snapshot import COLUMNS
from shardprune.scores.reports import Item
from shardprune.scores.transfer import resolve
from shardprune.scores.update import CleanBatch, fold, validate
from shardprune.scores.zarrio import runs

Block = tuple[int, dict[str, np.ndarray]]


@dataclass
class Taken:
    """What one flush or snapshot took from the live columns.

    Attributes:
        dirty: bool per chunk: the chunks changed since the previous take (all of them
            when ``everything`` was asked for).
        blocks: ``(start_sample, {column: values})`` copies of the dirty chunk runs.
        full: Copies of the whole columns, when a snapshot or a full rewrite asked for them.
    """

    dirty: np.ndarray
    blocks: list[Block]
    full: dict[str, np.ndarray] | None


class LiveColumns:
    """The five score columns of N samples, their dirty chunks, and the applied-report counters.

    Args:
        columns: Initial columns (taken over, not copied).
        chunk_size: Samples per chunk (the unit of dirtiness and of flushing).
        ema_beta: EMA momentum of the update rule.
        stats: The store's counters; ``updates_applied``, ``batches_applied`` and the
            ``skipped_*`` counts are added to under the lock.
    """

    def __init__(self, columns: dict[str, np.ndarray], chunk_size: int, ema_beta: float, stats: dict[str, Any]) -> None:
        self._columns = columns
        self.chunk_size = chunk_size
        self.ema_beta = ema_beta
        self.stats = stats
        self._dirty = np.zeros(-(-len(columns["loss"]) // chunk_size), dtype=bool)
        self._lock = threading.Lock()

    def fold(self, clean: list[CleanBatch]) -> None:
        """Apply validated batches in order and mark their chunks dirty."""
        if not clean:
            return
        ids = np.concatenate([c.ids for c in clean])
        losses = np.concatenate([c.losses for c in clean])
        epochs = np.concatenate([np.full(len(c.ids), c.epoch, dtype=np.int32) for c in clean])
        with self._lock:
            fold(self._columns, ids, losses, epochs, self.ema_beta)
            self._dirty[ids // self.chunk_size] = True
            self.stats["updates_applied"] += len(ids)
            self.stats["batches_applied"] += len(clean)
            self.stats["skipped_nonfinite"] += sum(c.skipped_nonfinite for c in clean)
            self.stats["skipped_out_of_range"] += sum(c.skipped_out_of_range for c in clean)

    def fold_queued(self, num_samples: int, invalid: str, items: list[Item]) -> None:
        """Validate queued ``(ids, losses, epoch)`` items and fold the good ones, in order.

        One bad batch does not drop the others; the first error is raised after folding.
        """
        clean: list[CleanBatch] = []
        first_error: BaseException | None = None
        for h_ids, h_losses, e in items:
            try:
                clean.append(validate(resolve(h_ids), resolve(h_losses), e, num_samples, invalid))
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the good batches
                first_error = first_error or exc
        self.fold(clean)
        if first_error is not None:
            raise first_error

    def count_skipped(self, reason: str, count: int) -> None:
        key = f"skipped_{reason}"
        with self._lock:
            self.stats[key] = int(self.stats.get(key, 0)) + count

    def take(self, *, full: bool, everything: bool = False) -> Taken:
        """Copy the dirty chunks (and the whole columns if ``full``) and clear the dirty mask.

        Args:
            full: Also copy the whole columns (a snapshot needs them).
            everything: If any chunk is dirty, treat every chunk as dirty (a full
                rewrite of the store, which also copies the whole columns).
        """
        cs = self.chunk_size
        with self._lock:
            everything = everything and bool(self._dirty.any())
            dirty = np.ones_like(self._dirty) if everything else self._dirty.copy()
            self._dirty[:] = False
            whole = {name: self._columns[name].copy() for name, _ in COLUMNS} if full or everything else None
            source = self._columns if whole is None else whole
            blocks = [(a * cs, {name: source[name][a * cs : b * cs] for name, _ in COLUMNS}) for a, b in runs(dirty)]
            if whole is None:
                blocks = [(start, {name: col.copy() for name, col in cols.items()}) for start, cols in blocks]
        return Taken(dirty, blocks, whole)

    def give_back(self, dirty: np.ndarray) -> None:
        """Mark ``dirty`` chunks dirty again (a flush that failed, or a snapshot not written)."""
        with self._lock:
            self._dirty |= dirty

    def replace(self, columns: dict[str, np.ndarray]) -> None:
        """Install restored columns; nothing is dirty (they are already committed)."""
        with self._lock:
            self._columns = {name: np.array(columns[name]) for name, _ in COLUMNS}
            self._dirty[:] = False

    def has_dirty(self) -> bool:
        with self._lock:
            return bool(self._dirty.any())

    def dirty_chunks(self) -> int:
        with self._lock:
            return int(self._dirty.sum())

    def __getitem__(self, name: str) -> np.ndarray:
        """The live column ``name`` (tests and the report thread only; callers must not write)."""
        return self._columns[name]
