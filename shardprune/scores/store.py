"""The score store: per-sample training scores, updated off the training thread, kept in zarr.

The in-memory columns are authoritative. ``update`` hands a batch's ids and losses to a
background thread and returns; that thread folds them into the columns and marks their
chunks dirty. Dirty chunks are written to zarr as a new immutable generation on a timer,
on ``flush``, on ``state_dict`` (checkpoint) and on ``close``; a pointer object is then
replaced atomically (see :mod:`shardprune.scores.generations`), so a crash mid-flush
leaves the previous complete state readable. Scattered per-step writes never happen.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
import uuid
from typing import Any

import numpy as np

from shardprune.errors import CheckpointMismatchError, ConfigError, ScoreStoreError, ScoreStoreMismatchError
from shardprune.scores import generations as gen
from shardprune.scores.snapshot import COLUMNS, ScoreSnapshot, fresh_columns
from shardprune.scores.transfer import HostArray, resolve, shape_of, to_host
from shardprune.scores.update import INVALID_MODES, CleanBatch, check_lengths, fold, validate
from shardprune.storage import Storage

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
_MAX_DRAIN = 256
_STOP = object()
_Item = tuple[HostArray, HostArray, int]


def keep_pins(pins: list[dict[str, Any]], protect: str | tuple[str, ...]) -> list[dict[str, Any]]:
    """The newest ``MAX_PINS`` pins, always including those of ``protect`` if present.

    ``protect`` is the snapshot the current epoch was planned from (and the one the next
    epoch is being planned from, near an epoch's end): a resume re-plans the epoch from
    it, so frequent checkpoints (one pin each) must not push it out.
    """
    if len(pins) <= gen.MAX_PINS:
        return pins
    wanted = {protect} if isinstance(protect, str) else set(protect)
    kept = [p for p in pins if p["fingerprint"] in wanted][-len(wanted) :]
    others = [p for p in pins if p["fingerprint"] not in wanted]
    return kept + others[len(others) - (gen.MAX_PINS - len(kept)) :]


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
    random id, so no two processes ever write the same chunk file; the shared pointer
    records the owner. Opening a writer claims the store; a previous writer notices at
    its next flush and raises :class:`ScoreStoreError` instead of overwriting newer
    state. In distributed training, rank 0 is the writer and the other ranks open
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
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples={num_samples!r} must be an int >= 1 (the dataset's sample count)")
        if not isinstance(dataset_fingerprint, str) or not dataset_fingerprint:
            raise ConfigError("dataset_fingerprint must be a non-empty string; pass dataset.fingerprint")
        if not 0.0 <= ema_beta < 1.0:
            raise ConfigError(f"ema_beta={ema_beta} is outside [0, 1); pass e.g. ema_beta=0.9")
        if flush_interval_s is not None and not flush_interval_s > 0:
            raise ConfigError(f"flush_interval_s={flush_interval_s} must be > 0, or None to flush only on demand")
        if invalid not in INVALID_MODES:
            raise ConfigError(f"invalid={invalid!r} must be one of {INVALID_MODES}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= 1 << 26:
            raise ConfigError(f"chunk_size={chunk_size!r} must be an int in 1..2**26; pass e.g. 65536")
        self.num_samples = num_samples
        self.dataset_fingerprint = dataset_fingerprint
        self.ema_beta = float(ema_beta)
        self.invalid = invalid
        self.writer = bool(writer)
        self.flush_interval_s = flush_interval_s
        self._storage = Storage(url, storage_options)
        self._pid = os.getpid()
        self._writer_id = uuid.uuid4().hex if writer else ""
        self._epoch = 0
        self._closed = False
        self._error: BaseException | None = None
        self._lost_ownership = False
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
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._open(chunk_size)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ticket = itertools.count(1)
        self._submitted = 0
        self._applied = 0
        self._done = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="shardprune-scores", daemon=True)
        self._worker.start()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if self.writer and flush_interval_s is not None:
            self._timer = threading.Thread(target=self._flush_periodically, name="shardprune-flush", daemon=True)
            self._timer.start()

    # -- opening -------------------------------------------------------------------------
    def _open(self, chunk_size: int) -> None:
        commit = gen.read_commit(self._storage)
        where = self._storage.path(gen.POINTER_NAME)
        if commit is None:
            self.chunk_size = chunk_size
            self._columns = fresh_columns(self.num_samples)
            self._commit = gen.Commit(
                num_samples=self.num_samples,
                dataset_fingerprint=self.dataset_fingerprint,
                chunk_size=chunk_size,
                ema_beta=self.ema_beta,
                chunks=[-1] * -(-self.num_samples // chunk_size),
            )
        else:
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
            self.chunk_size = commit.chunk_size
            self._commit = commit
            self._columns = gen.read_columns(self._storage, commit, commit.chunks)
        self._dirty = np.zeros(self._commit.num_chunks, dtype=bool)
        self.stats["generation"] = self._commit.generation
        if self.writer:
            # Claiming: from now on a writer that opened earlier can no longer commit.
            self._commit.writer = self._writer_id
            gen.write_commit(self._storage, self._commit)

    # -- process binding -----------------------------------------------------------------
    def __reduce__(self) -> Any:
        raise ScoreStoreError(
            f"ScoreStore({self._storage.url!r}) cannot be pickled: it owns a background thread and the only "
            "write access to its store. Give worker processes store.snapshot() (plain arrays), or open "
            "ScoreStore(..., writer=False) inside the worker"
        )

    def _check_usable(self) -> None:
        if os.getpid() != self._pid:
            raise ScoreStoreError(
                f"ScoreStore({self._storage.url!r}) was opened in process {self._pid} and used in process "
                f"{os.getpid()} (a forked worker?). A store cannot cross fork: its thread and fsspec client "
                "stay in the parent. Use store.snapshot() in workers, or open the store in the child"
            )
        if self._closed:
            raise ScoreStoreError(f"ScoreStore({self._storage.url!r}) is closed")
        self._raise_pending()

    def _raise_pending(self) -> None:
        err, self._error = self._error, None
        if err is not None:
            raise err

    # -- reports -------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch recorded for reports that ``update`` receives without one."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch={epoch!r} must be an int >= 0")
        self._epoch = epoch

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
        ids_shape, loss_shape = shape_of(h_ids), shape_of(h_losses)
        check_lengths(np.empty(ids_shape), np.empty(loss_shape))
        if self.invalid == "raise" and isinstance(h_ids, np.ndarray) and isinstance(h_losses, np.ndarray):
            validate(h_ids, h_losses, e, self.num_samples, "raise")
        with self._done:
            self._submitted = next(self._ticket)
            self._queue.put((h_ids, h_losses, e))

    def apply(self, ids: np.ndarray, losses: np.ndarray, epoch: int) -> None:
        """Apply reports synchronously (after any queued ones), with the same validation."""
        self.wait()
        h_ids = resolve(to_host(ids, what="ids", as_ids=True))
        h_losses = resolve(to_host(losses, what="losses", as_ids=False))
        self._apply_clean([validate(h_ids, h_losses, int(epoch), self.num_samples, self.invalid)])

    def record_skipped(self, count: int, reason: str = "mixed") -> None:
        """Count reports the caller chose not to send (e.g. Mixup-blended samples)."""
        key = f"skipped_{reason}"
        with self._lock:
            self.stats[key] = int(self.stats.get(key, 0)) + int(count)

    def wait(self) -> None:
        """Block until every queued report is applied; raise a deferred error if any."""
        self._check_usable()
        with self._done:
            target = self._submitted
            while self._applied < target:
                self._done.wait()
        self._raise_pending()

    def _work(self) -> None:
        while True:
            items: list[Any] = [self._queue.get()]
            while len(items) < _MAX_DRAIN:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(it is _STOP for it in items)
            batch = [it for it in items if it is not _STOP]
            try:
                self._apply_items(batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                if self._error is None:
                    self._error = exc
            finally:
                with self._done:
                    self._applied += len(batch)
                    self._done.notify_all()
            if stop:
                return

    def _apply_items(self, items: list[_Item]) -> None:
        clean: list[CleanBatch] = []
        first_error: BaseException | None = None
        for h_ids, h_losses, e in items:
            try:
                clean.append(validate(resolve(h_ids), resolve(h_losses), e, self.num_samples, self.invalid))
            except BaseException as exc:  # noqa: BLE001 - one bad batch must not drop the others
                first_error = first_error or exc
        self._apply_clean(clean)
        if first_error is not None:
            raise first_error

    def _apply_clean(self, clean: list[CleanBatch]) -> None:
        if not clean:
            return
        if len(clean) == 1:
            ids, losses = clean[0].ids, clean[0].losses
            epochs = np.full(len(ids), clean[0].epoch, dtype=np.int32)
        else:
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

    # -- snapshots and flushing ---------------------------------------------------------
    def _freeze(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Copy the columns and take (and clear) the dirty mask in one step."""
        with self._lock:
            cols = {name: self._columns[name].copy() for name, _ in COLUMNS}
            dirty = self._dirty.copy()
            self._dirty[:] = False
        return cols, dirty

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
        with self._flush_lock:
            cols, dirty = self._freeze()
            snap = ScoreSnapshot.from_columns(cols, copy=False)
            if pin:
                self._persist(cols, dirty, pin={"fingerprint": snap.fingerprint, "kind": "snapshot"})
            else:
                with self._lock:
                    self._dirty |= dirty
        return snap

    def flush(self) -> None:
        """Write dirty chunks as a new generation and commit it (writers; replicas: no-op)."""
        self.wait()
        self._flush()

    def _flush(self) -> None:
        if not self.writer:
            return
        with self._flush_lock:
            with self._lock:
                dirty = self._dirty.copy()
                self._dirty[:] = False
                cs = self.chunk_size
                blocks = [
                    (a * cs, {name: self._columns[name][a * cs : b * cs].copy() for name, _ in COLUMNS})
                    for a, b in gen.runs(dirty)
                ]
            self._persist_blocks(blocks, dirty, pin=None, full=None)

    def _persist(self, cols: dict[str, np.ndarray], dirty: np.ndarray, pin: dict[str, Any] | None) -> None:
        cs = self.chunk_size
        blocks = [(a * cs, {name: cols[name][a * cs : b * cs] for name, _ in COLUMNS}) for a, b in gen.runs(dirty)]
        self._persist_blocks(blocks, dirty, pin, full=cols)

    def _persist_blocks(
        self,
        blocks: list[tuple[int, dict[str, np.ndarray]]],
        dirty: np.ndarray,
        pin: dict[str, Any] | None,
        full: dict[str, np.ndarray] | None,
    ) -> None:
        """Write ``blocks`` (the dirty chunks) as a generation, then commit; re-mark on failure.

        ``full`` is the complete state the blocks were cut from (None: the live columns),
        used when too many generations are live and every chunk is rewritten.
        """
        if not dirty.any() and pin is None:
            return
        t0 = time.perf_counter()
        try:
            head = gen.read_commit(self._storage)
            if self._lost_ownership or head is None or head.writer != self._writer_id:
                self._lost_ownership = True
                other = "nobody (the pointer was deleted)" if head is None else f"writer {head.writer[:8]}"
                raise ScoreStoreError(
                    f"score store {self._storage.url} is now owned by {other}, not by this writer "
                    f"{self._writer_id[:8]}; another process opened it as a writer. Only one writer per store "
                    "URL may exist: open the other processes with writer=False"
                )
            commit = head
            chunks = list(commit.chunks)
            live_before = {commit.dirs[i] for i in chunks if i >= 0}
            if dirty.any() and len(live_before) >= gen.MAX_LIVE_GENERATIONS:
                dirty = np.ones_like(dirty)
                if full is None:
                    with self._lock:
                        blocks = [(0, {name: self._columns[name].copy() for name, _ in COLUMNS})]
                        self._dirty[:] = False
                else:
                    blocks = [(0, full)]
            number = commit.generation + 1
            if dirty.any():
                dirname = f"{gen.GEN_PREFIX}{number:08d}-{self._writer_id[:8]}"
                gen.write_generation(self._storage, dirname, self.num_samples, self.chunk_size, blocks)
                commit.dirs.append(dirname)
                new = len(commit.dirs) - 1
                chunks = [new if d else c for c, d in zip(chunks, dirty.tolist())]
            commit.previous = commit.chunks
            commit.chunks = chunks
            commit.generation = number
            if pin is not None:
                commit.pins = [p for p in commit.pins if p["fingerprint"] != pin["fingerprint"]]
                commit.pins.append({**pin, "chunks": list(chunks)})
                commit.pins = keep_pins(
                    commit.pins, (self._previous_snapshot_fingerprint, self.last_snapshot_fingerprint)
                )
            commit.compact_dirs()
            gen.write_commit(self._storage, commit)
        except BaseException:
            with self._lock:
                self._dirty |= dirty
            self.stats["flush_errors"] += 1
            raise
        self._commit = commit
        self.stats["flushes"] += 1
        self.stats["chunks_written"] += int(dirty.sum())
        self.stats["generation"] = commit.generation
        try:
            gen.collect_garbage(self._storage, commit)
        except OSError:
            # Leftover generations are harmless; the next commit retries their removal.
            pass
        self.stats["last_flush_s"] = time.perf_counter() - t0

    def _flush_periodically(self) -> None:
        assert self.flush_interval_s is not None
        while not self._stop.wait(self.flush_interval_s):
            try:
                with self._done:
                    target = self._submitted
                    while self._applied < target and not self._stop.is_set():
                        self._done.wait(timeout=1.0)
                self._flush()
            except Exception:  # noqa: BLE001 - counted in stats; explicit flush() raises
                if self._lost_ownership:
                    return

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
        snap = ScoreSnapshot.from_columns(gen.read_columns(self._storage, commit, pins[-1]["chunks"]), copy=False)
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
            with self._lock:
                self._columns = {name: np.array(col) for name, col in snap.columns().items()}
                self._dirty[:] = False
            if self.writer:
                # Rolling back is a commit of the pinned chunk map: no chunk is rewritten.
                self._commit_pin(snap.fingerprint)
        self._epoch = int(state["epoch"])
        self.last_snapshot_fingerprint = str(state["snapshot_fingerprint"])
        for key, value in state["stats"].items():
            if key in self.stats and key != "generation":
                self.stats[key] = value

    def _commit_pin(self, fingerprint: str) -> None:
        head = gen.read_commit(self._storage)
        if head is None or head.writer != self._writer_id:
            self._lost_ownership = True
            raise ScoreStoreError(
                f"score store {self._storage.url} is owned by another writer; this writer cannot restore a "
                "checkpoint into it. Open the other processes with writer=False"
            )
        pin = next(p for p in head.pins if p["fingerprint"] == fingerprint)
        head.previous = head.chunks
        head.chunks = list(pin["chunks"])
        head.generation += 1
        head.compact_dirs()
        gen.write_commit(self._storage, head)
        self._commit = head
        self.stats["generation"] = head.generation

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Apply queued reports, flush (writers), stop the threads. Idempotent."""
        if self._closed or os.getpid() != self._pid:
            return
        self._stop.set()
        self._queue.put(_STOP)
        self._worker.join()
        if self._timer is not None:
            self._timer.join()
        try:
            self._raise_pending()
            if not self._lost_ownership:
                self._flush()
        finally:
            self._closed = True

    def __enter__(self) -> "ScoreStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "writer" if self.writer else "replica"
        return f"ScoreStore({self._storage.url!r}, num_samples={self.num_samples}, {role})"
