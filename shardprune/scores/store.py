"""The score store: per-sample training scores, updated off the training thread, kept in zarr.

The in-memory columns are authoritative. ``update`` hands a batch's ids and losses to a
background thread and returns; that thread folds them into the columns and marks their
chunks dirty. Dirty chunks are written to zarr as a new immutable generation on a timer,
on ``flush``, on ``snapshot``/``state_dict`` (pins) and on ``close``, always through one
path (``_write``); the commit protocol of :mod:`shardprune.scores.generations` then
publishes it with a create-only write, so a crash mid-flush leaves the previous complete
state readable and a second writer can never commit over the first. Scattered per-step
writes never happen.

The parts, one job each: :mod:`~shardprune.scores.options` (argument checks),
:mod:`~shardprune.scores.reports` (queue and applying thread),
:mod:`~shardprune.scores.columns` (live columns and dirty chunks),
:mod:`~shardprune.scores.generations` (commit protocol and rollback),
:mod:`~shardprune.scores.zarrio` (one generation's arrays),
:mod:`~shardprune.scores.ownership` (create-only writes),
:mod:`~shardprune.scores.binding` (process guard and the unflushed-GC warning).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
import weakref
from typing import Any

import numpy as np

from shardprune.errors import (
    CheckpointMismatchError,
    ConfigError,
    OwnershipLostError,
    ScoreStoreError,
    ScoreStoreMismatchError,
)
from shardprune.scores import generations as gen
from shardprune.scores.binding import ProcessBinding
from shardprune.scores.columns import LiveColumns
from shardprune.scores.options import StoreOptions
from shardprune.scores.reports import ReportQueue
from shardprune.scores.snapshot import ScoreSnapshot, fresh_columns
from shardprune.scores.transfer import resolve, shape_of, to_host
from shardprune.scores.update import check_lengths, validate
from shardprune.scores.zarrio import read_columns
from shardprune.storage import Storage
from shardprune.validate import check_int

STATE_VERSION = 1
#: Keys of :meth:`ScoreStore.state_dict`, loaded strictly.
STATE_KEYS = (
    "version",
    "num_samples",
    "dataset_fingerprint",
    "ema_beta",
    "epoch",
    "scores_fingerprint",
    "snapshot_fingerprint",
    "generation",
    "stats",
)
#: Attempts to claim a store while other writers commit at the same moment.
_CLAIM_ATTEMPTS = 5


class ScoreStore:
    """Per-sample scores for one dataset, at a local path or an fsspec URL.

    Args:
        url: Local directory or fsspec URL (``s3://bucket/prefix``) of the store.
        num_samples: N, the dataset's sample count (from its manifest).
        dataset_fingerprint: The dataset's fingerprint; a store made for another
            dataset is refused.
        storage_options: fsspec options for remote URLs (endpoint, credentials).
        ema_beta: EMA momentum for ``loss_ema`` and ``delta_ema``, in [0, 1). Default 0.9.
        flush_interval_s: Seconds between background flushes (writers only), or None
            for flushes only on ``flush``/``state_dict``/``close``. Default 30.
        invalid: ``"raise"`` (default): a batch with a NaN/inf loss or an out-of-range id
            is rejected whole with :class:`InvalidLossError`; ``"skip"``: bad entries are
            dropped and counted in ``stats``. Length mismatches always raise.
        writer: True: this process owns the store and flushes it. False: an in-memory
            replica that reads the committed state once and never writes (non-owner ranks).
        chunk_size: Samples per zarr chunk for a new store (an existing store keeps its own).

    Ownership: zarr has no locking, so exactly one writer commits to a store URL. Every
    flush writes chunk files into a generation directory named after the writer's
    random id, so no two processes ever write the same chunk file, and every commit is
    created only if its generation number is still free (S3 ``If-None-Match``, locally
    a hard link; see :mod:`shardprune.scores.ownership`). Opening a writer commits the
    next generation, which claims the store; a previous writer loses its next commit
    and raises :class:`~shardprune.errors.OwnershipLostError` instead of overwriting
    newer state. In distributed training, rank 0 is the writer and the other ranks open
    replicas and receive the same all-gathered reports through :meth:`apply`.

    State format (:meth:`state_dict`): JSON-able ``{"version", "num_samples",
    "dataset_fingerprint", "ema_beta", "epoch", "scores_fingerprint",
    "snapshot_fingerprint", "generation", "stats"}``. The scores live in the store,
    pinned under ``scores_fingerprint``; loading a state restores exactly those scores.

    Determinism: the columns after a sequence of reports depend only on the reports and
    their order (reports from one ``update`` call are applied in order; calls from
    several threads are applied in the order they were queued). A snapshot's
    fingerprint depends only on its contents.

    Processes: a store is bound to the process that opened it. Pickling raises
    :class:`ScoreStoreError`, and so does any call from a forked child, so a DataLoader
    worker can never share the live store or its fsspec client. Workers get a
    :class:`ScoreSnapshot` (plain arrays) instead.

    Lifetime: use ``with ScoreStore(...) as store:`` or call :meth:`close`; a writer that
    is garbage-collected with reports not yet committed warns with
    :class:`~shardprune.errors.UnflushedScoresWarning` (those reports are lost).
    """


    def __init__(
        self,
        url: str | os.PathLike[str],
        num_samples: int,
        dataset_fingerprint: str,
        *,
        storage_options: dict[str, Any] | None = None,
        ema_beta: float = 0.9,
        flush_interval_s: float | None = 30.0,
        invalid: str = "raise",
        writer: bool = True,
        chunk_size: int = 65536,
    ) -> None:
        opts = StoreOptions.check(num_samples, dataset_fingerprint, ema_beta, flush_interval_s, invalid, writer, chunk_size)
        self.num_samples = opts.num_samples
        self.dataset_fingerprint = opts.dataset_fingerprint
        self.ema_beta = opts.ema_beta
        self.invalid = opts.invalid
        self.writer = opts.writer
        self.flush_interval_s = opts.flush_interval_s
        self._storage = Storage(url, storage_options)
        self._writer_id = uuid.uuid4().hex if self.writer else ""
        self._epoch = 0
        self._closed = False
        self._lost: OwnershipLostError | None = None
        self.stats: dict[str, Any] = {
            "updates_applied": 0,
            "batches_applied": 0,
            "skipped_nonfinite": 0,
            "skipped_out_of_range": 0,
            "skipped_mixed": 0,
            "flushes": 0,
            "flush_errors": 0,
            "chunks_written": 0,
            "last_flush_s": 0.0,
            "generation": 0,
        }
        self.last_snapshot_fingerprint = ""
        self._previous_snapshot_fingerprint = ""  # the loader plans the next epoch before this one ends
        self._flush_lock = threading.Lock()
        self._commit, columns = self._open(opts.chunk_size)
        self.chunk_size = self._commit.chunk_size
        self.stats["generation"] = self._commit.generation
        self._columns = LiveColumns(columns, self.chunk_size, self.ema_beta, self.stats)
        # Neither thread nor the finalizer holds the store itself, so a dropped store is collected.
        self._reports = ReportQueue(functools.partial(self._columns.fold_queued, self.num_samples, self.invalid))
        self._stop = threading.Event()
        self._binding = ProcessBinding(
            self,
            self._storage.url,
            functools.partial(_unflushed, self._reports, self._columns, self.writer),
            functools.partial(_stop_threads, self._reports, self._stop),
        )
        self._timer: threading.Thread | None = None
        if self.writer and self.flush_interval_s is not None:
            self._timer = threading.Thread(
                target=_flush_periodically,
                args=(weakref.ref(self), self.flush_interval_s, self._stop),
                name="shardprune-flush",
                daemon=True,
            )
            self._timer.start()

    # -- opening -------------------------------------------------------------------------
    def _open(self, chunk_size: int) -> tuple[gen.Commit, dict[str, np.ndarray]]:
        """Read the newest commit; a writer then claims the store by committing the next generation."""
        for attempt in range(_CLAIM_ATTEMPTS):
            base = gen.read_commit(self._storage)
            if base is None:
                base = gen.Commit(
                    num_samples=self.num_samples,
                    dataset_fingerprint=self.dataset_fingerprint,
                    chunk_size=chunk_size,
                    ema_beta=self.ema_beta,
                    chunks=[-1] * -(-self.num_samples // chunk_size),
                )
            self._check_matches(base)
            if not self.writer:
                return base, read_columns(self._storage, base, base.chunks)
            claim = base.successor(self._writer_id)
            try:
                gen.publish(self._storage, base, claim)
            except OwnershipLostError:
                # Another writer committed between our read and our create: read again.
                if attempt == _CLAIM_ATTEMPTS - 1:
                    raise
                continue
            return claim, read_columns(self._storage, claim, claim.chunks)
        raise AssertionError("unreachable")

    def _check_matches(self, commit: gen.Commit) -> None:
        where = self._storage.path(gen.POINTER_NAME)
        if commit.num_samples != self.num_samples or commit.dataset_fingerprint != self.dataset_fingerprint:
            raise ScoreStoreMismatchError(
                f"score store {where} was made for a dataset with num_samples={commit.num_samples}, "
                f"fingerprint {commit.dataset_fingerprint!r}; this dataset has num_samples={self.num_samples}, "
                f"fingerprint {self.dataset_fingerprint!r}. Use a new store URL for this dataset, "
                "or delete the old store"
            )
        if abs(commit.ema_beta - self.ema_beta) > 1e-12:
            raise ScoreStoreMismatchError(
                f"score store {where} was built with ema_beta={commit.ema_beta}, now ema_beta={self.ema_beta}; "
                f"pass ema_beta={commit.ema_beta} or use a new store URL"
            )

    # -- process binding -----------------------------------------------------------------
    def __reduce__(self) -> Any:
        raise self._binding.pickle_error()

    def _check_usable(self) -> None:
        self._binding.check()
        if self._closed:
            raise ScoreStoreError(f"ScoreStore({self._storage.url!r}) is closed")
        self._reports.raise_pending()

    # -- reports -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch recorded for reports that ``update`` receives without one."""
        self._epoch = check_int("epoch", epoch, 0)

    @property
    def epoch(self) -> int:
        return self._epoch

    def update(self, ids: Any, losses: Any, *, epoch: int | None = None) -> None:
        """Queue one batch of per-sample losses and return at once.

        Args:
            ids: int64 sample ids (torch tensor on any device, numpy array or sequence).
            losses: Per-sample losses, same length (fp32/fp16/bf16 tensor or array).
            epoch: Epoch of the reports; default the one from :meth:`set_epoch`.

        Raises:
            InvalidLossError: at once for a length mismatch or non-integer ids; for
                NaN/inf losses or out-of-range ids (``invalid="raise"``) at once when the
                inputs are on the CPU, else at the next call after the background thread
                found them. A rejected batch changes nothing.
        """
        self._check_usable()
        e = self._epoch if epoch is None else int(epoch)
        h_ids = to_host(ids, what="ids", as_ids=True)
        h_losses = to_host(losses, what="losses", as_ids=False)
        check_lengths(np.empty(shape_of(h_ids)), np.empty(shape_of(h_losses)))
        if self.invalid == "raise" and isinstance(h_ids, np.ndarray) and isinstance(h_losses, np.ndarray):
            validate(h_ids, h_losses, e, self.num_samples, "raise")
        self._reports.put((h_ids, h_losses, e))

    def apply(self, ids: np.ndarray, losses: np.ndarray, epoch: int) -> None:
        """Apply reports synchronously (after any queued ones), with the same validation."""
        self.wait()
        h_ids = resolve(to_host(ids, what="ids", as_ids=True))
        h_losses = resolve(to_host(losses, what="losses", as_ids=False))
        self._columns.fold([validate(h_ids, h_losses, int(epoch), self.num_samples, self.invalid)])

    def record_skipped(self, count: int, reason: str = "mixed") -> None:
        """Count reports the caller chose not to send (e.g. Mixup-blended samples)."""
        self._columns.count_skipped(reason, check_int("count", count, 0))

    def wait(self) -> None:
        """Block until every queued report is applied; raise a deferred error if any."""
        self._check_usable()
        self._reports.wait()
        self._reports.raise_pending()

    # -- snapshots and flushing: one path -------------------------------------------------
    def snapshot(self, *, pin: bool | None = None) -> ScoreSnapshot:
        """Freeze the current scores for planning an epoch.

        Args:
            pin: Persist the snapshot so :meth:`pinned_snapshot` can reload it after a
                resume (default: True for a writer, False for a replica). Pinning
                flushes the dirty chunks.

        Returns:
            The snapshot; its fingerprint is also kept in ``last_snapshot_fingerprint``
            and in :meth:`state_dict`.
        """
        snap = self._take_snapshot(self.writer if pin is None else pin)
        self._previous_snapshot_fingerprint = self.last_snapshot_fingerprint
        self.last_snapshot_fingerprint = snap.fingerprint
        return snap

    def _take_snapshot(self, pin: bool) -> ScoreSnapshot:
        self.wait()
        if pin and not self.writer:
            raise ConfigError("pin=True needs a writer store; replicas never write")
        snap = self._write(snapshot=True, pin=pin)
        assert snap is not None
        return snap

    def flush(self) -> None:
        """Write dirty chunks as a new generation and commit it (writers; replicas: no-op)."""
        self.wait()
        self._write(snapshot=False, pin=False)

    def _write(self, *, snapshot: bool, pin: bool) -> ScoreSnapshot | None:
        """The one flush path: take the dirty chunks (and, for a snapshot, every column) and commit.

        Args:
            snapshot: Also freeze the whole columns and return them as a snapshot.
            pin: Record the snapshot in the commit so it can be reloaded.

        A replica, or an unpinned snapshot, commits nothing: its chunks stay dirty for
        the next flush. On any failure the chunks are marked dirty again.
        """
        persist = self.writer and (pin or not snapshot)
        with self._flush_lock:
            if persist and self._lost is not None:
                raise ScoreStoreError(str(self._lost))
            rewrite = persist and self._commit.needs_rewrite()
            taken = self._columns.take(full=snapshot, everything=rewrite)
            snap = ScoreSnapshot.from_columns(taken.full, copy=False) if taken.full is not None and snapshot else None
            if not persist or (not taken.dirty.any() and not pin):
                self._columns.give_back(taken.dirty)
                return snap
            pinned = None if snap is None else {"fingerprint": snap.fingerprint, "kind": "snapshot"}
            t0 = time.perf_counter()
            try:
                new = gen.commit_dirty(
                    self._storage,
                    self._commit,
                    self._writer_id,
                    taken.blocks,
                    taken.dirty,
                    pinned,
                    (self._previous_snapshot_fingerprint, self.last_snapshot_fingerprint),
                )
            except BaseException as exc:
                if isinstance(exc, OwnershipLostError):
                    self._lost = exc
                self._columns.give_back(taken.dirty)
                self.stats["flush_errors"] += 1
                raise
            self._commit = new
            self.stats["flushes"] += 1
            self.stats["chunks_written"] += int(taken.dirty.sum())
            self.stats["generation"] = new.generation
            self.stats["last_flush_s"] = time.perf_counter() - t0
            return snap

    def _flush_in_background(self, stop: threading.Event) -> bool:
        """One timer flush; False once this writer lost the store (the timer then ends)."""
        try:
            self._reports.wait(stop)
            self._write(snapshot=False, pin=False)
        except Exception:  # noqa: BLE001 - counted in stats; an explicit flush() raises it
            return self._lost is None
        return True

    def pinned_snapshot(self, fingerprint: str) -> ScoreSnapshot:
        """Reload a snapshot pinned by :meth:`snapshot` or :meth:`state_dict`.

        Raises:
            CheckpointMismatchError: if no pin has that fingerprint or the data differ.
        """
        self._check_usable()
        commit = gen.read_commit(self._storage)
        pins = [] if commit is None else [p for p in commit.pins if p["fingerprint"] == fingerprint]
        if commit is None or not pins:
            have = [] if commit is None else [p["fingerprint"] for p in commit.pins]
            raise CheckpointMismatchError(
                f"score snapshot {fingerprint} (in checkpoint) is not pinned in {self._storage.url} "
                f"(pinned now: {have}); only the last {gen.MAX_PINS} pins are kept. Resume from a newer "
                "checkpoint, or start the epoch again"
            )
        snap = ScoreSnapshot.from_columns(read_columns(self._storage, commit, pins[-1]["chunks"]), copy=False)
        if snap.fingerprint != fingerprint:
            raise CheckpointMismatchError(
                f"pinned scores in {self._storage.url} have fingerprint {snap.fingerprint} (now), "
                f"expected {fingerprint} (in checkpoint); the store was modified outside shardprune"
            )
        return snap

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Flush, pin the current scores, and return the small JSON-able state (see class doc)."""
        snap = self._take_snapshot(self.writer)
        return {
            "version": STATE_VERSION,
            "num_samples": self.num_samples,
            "dataset_fingerprint": self.dataset_fingerprint,
            "ema_beta": self.ema_beta,
            "epoch": self._epoch,
            "scores_fingerprint": snap.fingerprint,
            "snapshot_fingerprint": self.last_snapshot_fingerprint,
            "generation": self._commit.generation,
            "stats": {k: v for k, v in self.stats.items() if isinstance(v, (int, float))},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scores, epoch and counters of a :meth:`state_dict`.

        Raises:
            CheckpointMismatchError: on a missing/unknown key, another dataset or EMA
                momentum, or scores that are not pinned in the store any more.
        """
        self._check_usable()
        missing = [k for k in STATE_KEYS if k not in state]
        extra = [k for k in state if k not in STATE_KEYS]
        if missing or extra:
            raise CheckpointMismatchError(f"score store state has missing keys {missing} and unknown keys {extra}")
        if state["version"] != STATE_VERSION:
            raise CheckpointMismatchError(f"state version {state['version']} (in checkpoint), {STATE_VERSION} (now)")
        for key, now in (
            ("num_samples", self.num_samples),
            ("dataset_fingerprint", self.dataset_fingerprint),
            ("ema_beta", self.ema_beta),
        ):
            if state[key] != now:
                raise CheckpointMismatchError(f"{key}: {state[key]!r} (in checkpoint) vs {now!r} (now)")
        self.wait()
        snap = self.pinned_snapshot(state["scores_fingerprint"])
        with self._flush_lock:
            self._columns.replace(snap.columns())
            if self.writer:
                if self._lost is not None:
                    raise ScoreStoreError(str(self._lost))
                try:
                    self._commit = gen.roll_back(self._storage, self._commit, self._writer_id, snap.fingerprint)
                except OwnershipLostError as exc:
                    self._lost = exc
                    raise
                self.stats["generation"] = self._commit.generation
        self._epoch = int(state["epoch"])
        self.last_snapshot_fingerprint = str(state["snapshot_fingerprint"])
        for key, value in state["stats"].items():
            if key in self.stats and key != "generation":
                self.stats[key] = value

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Apply queued reports, flush (writers), stop the threads. Idempotent."""
        if self._closed or not self._binding.here:
            return
        self._stop.set()
        self._reports.stop()
        if self._timer is not None:
            self._timer.join()
        try:
            self._reports.raise_pending()
            if self._lost is None:
                self._write(snapshot=False, pin=False)
        finally:
            self._closed = True
            self._binding.closed()

    def __enter__(self) -> "ScoreStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "writer" if self.writer else "replica"
        return f"ScoreStore({self._storage.url!r}, num_samples={self.num_samples}, {role})"


def _flush_periodically(ref: "weakref.ref[ScoreStore]", interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        store = ref()
        if store is None or not store._flush_in_background(stop):
            return
        del store  # hold the store only while flushing, so a dropped store can be collected


def _unflushed(reports: ReportQueue, columns: LiveColumns, writer: bool) -> str:
    if not writer:
        return ""
    lost = []
    if reports.pending:
        lost.append(f"{reports.pending} queued update() call(s)")
    if columns.dirty_chunks():
        lost.append(f"the reports in {columns.dirty_chunks()} chunk(s) applied since the last flush")
    return " and ".join(lost)


def _stop_threads(reports: ReportQueue, stop: threading.Event) -> None:
    stop.set()
    reports.stop()
