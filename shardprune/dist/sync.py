"""One score state for every rank: buffer this rank's reports, all-gather them, apply everywhere.

Each rank holds a copy of the scores: rank 0 the writer :class:`ScoreStore` (the only
process that commits to the zarr store, so no two writers ever touch a chunk), every
other rank an in-memory replica (``writer=False``). Reports are buffered where they
were computed (on the GPU under nccl: no per-step device sync) and exchanged in a
:meth:`DistributedScores.sync`: one all-gather of a uint8 message per rank holding its
header (count, epochs, skipped) and its reports' bytes (int64 ids, then float32 losses:
reinterpreted on arrival, never converted, so ids never pass through a float dtype),
padded to a capacity every rank derives from the previous exchange; a rank with more
reports than the capacity makes it a second, padded all-gather. Every rank then
applies all ranks' reports *in rank order* through ``ScoreStore.apply``, so the
replicas stay bit-identical, and equal to one process fed the same reports. What is
exchanged is bounded by the samples visited (12 bytes per report and rank), never by
the dataset size.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from shardprune.dist.collectives import (
    Group,
    all_gather_ints,
    all_gather_varlen,
    exchange_with_headers,
    group_device,
    raise_together,
    require_initialized,
)
from shardprune.errors import ConfigError, DistributedError, InvalidLossError
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.scores.store import ScoreStore
from shardprune.validate import check_int

#: Default :attr:`DistributedScores.sync_every`: samples accounted (reported or skipped)
#: per rank between automatic syncs. 65,536 reports buffer 768 KiB on the device.
DEFAULT_SYNC_EVERY = 65536


class DistributedScores:
    """The score store of a ``torch.distributed`` job: a ScoreSink and snapshot source.

    Use it wherever a single process would use a :class:`ScoreStore`: as the loader's
    ``store`` and as :func:`shardprune.train.weighted_loss`'s sink.

    Args:
        store: This rank's store: the writer on rank 0, a replica (``writer=False``)
            elsewhere. :meth:`open` builds both in the right order.
        group: Process group (default: the WORLD group). Rank 0 of the group writes.
        sync_every: Sync automatically each time this many samples (reported through
            :meth:`update` or counted through :meth:`record_skipped`) accumulated on
            each rank (default 65536); None: sync only in :meth:`snapshot`,
            :meth:`state_dict`, :meth:`flush`, :meth:`close` and explicit :meth:`sync`.

    Collective calls: :meth:`sync`, :meth:`snapshot`, :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`flush` and :meth:`close` must be called by every
    rank in the same order. Automatic syncs are collective-safe because they are keyed
    by the number of samples accounted, which is the same on every rank after every
    step: the loader gives every rank batches of equal length, and
    :func:`~shardprune.train.weighted_loss` accounts each sample once (reported, or
    skipped when Mixup-blended). A rank that reports a different number of samples per
    step than the others must not use ``sync_every``.

    Determinism: after a sync every rank holds the same scores, equal to one
    :class:`ScoreStore` that applied every rank's reports of each sync in rank order.
    :meth:`snapshot` verifies it (an all-gather of the snapshot fingerprints) and raises
    :class:`DistributedError` if any rank differs.

    State format: :meth:`state_dict` returns rank 0's ``ScoreStore.state_dict`` (the
    scores pinned in the store under ``scores_fingerprint``), the same on every rank.
    """

    def __init__(self, store: ScoreStore, *, group: Group = None, sync_every: int | None = DEFAULT_SYNC_EVERY) -> None:
        require_initialized()
        if not isinstance(store, ScoreStore):
            raise ConfigError(f"store={store!r} must be a shardprune ScoreStore")
        if sync_every is not None:
            sync_every = check_int("sync_every", sync_every, 1, fix="samples per rank between syncs, or None")
        self.store = store
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        if store.writer != (self.rank == 0):
            role = "writer" if store.writer else "replica"
            raise DistributedError(
                f"rank {self.rank} got a {role} ScoreStore; rank 0 must hold the writer (writer=True) and every "
                "other rank a replica (writer=False). Build it with DistributedScores.open(...)"
            )
        self.sync_every = sync_every
        self.device = group_device(group)
        self._pid = os.getpid()
        self._ids: list[torch.Tensor] = []
        self._losses: list[torch.Tensor] = []
        self._epochs: list[int] = []
        self._pending = 0
        self._skipped: dict[str, int] = {}
        self._accounted = 0
        self._marks = 0
        self._capacity = 0  # reports per rank that fit the one-collective exchange; the same on every rank
        self.stats: dict[str, int] = {
            "syncs": 0,
            "collectives": 0,
            "reports_synced": 0,
            "bytes_received": 0,
            "max_buffered": 0,
        }

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str],
        num_samples: int,
        dataset_fingerprint: str,
        *,
        group: Group = None,
        sync_every: int | None = DEFAULT_SYNC_EVERY,
        **store_options: Any,
    ) -> "DistributedScores":
        """Open the store on every rank (collective): rank 0 as the writer first, then the replicas.

        Args:
            url: Score store location (local path shared by all ranks, or ``s3://...``).
            num_samples: The dataset's sample count.
            dataset_fingerprint: The dataset's fingerprint.
            group: Process group (default WORLD).
            sync_every: See the class docstring.
            **store_options: Passed to :class:`ScoreStore` (``storage_options``,
                ``ema_beta``, ``flush_interval_s``, ``invalid``, ``chunk_size``).

        Raises:
            DistributedError: on every rank when any rank failed to open the store (the
                failing rank raises its own error).
        """
        require_initialized()
        if "writer" in store_options:
            raise ConfigError("DistributedScores.open chooses writer= itself (rank 0 writes); do not pass it")
        rank = dist.get_rank(group)
        store: ScoreStore | None = None
        for turn in (True, False):  # the writer claims the store before replicas read it
            error: BaseException | None = None
            if (rank == 0) == turn:
                try:
                    store = ScoreStore(url, num_samples, dataset_fingerprint, writer=turn, **store_options)
                except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
                    error = exc
            try:
                raise_together(error, group, f"could not open the score store {url}")
            except DistributedError:
                if store is not None:
                    store.close()
                raise
        assert store is not None
        return cls(store, group=group, sync_every=sync_every)

    # -- ScoreSink ------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch recorded with later reports (local; reports keep their own epoch)."""
        self.store.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.store.epoch

    def update(self, ids: Any, losses: Any, *, epoch: int | None = None) -> None:
        """Buffer one batch of reports on this rank's device and return (no device sync).

        Args:
            ids: Integer sample ids (tensor on any device, numpy array or sequence).
            losses: One loss per id (detached here).
            epoch: Epoch of the reports (default: the one from :meth:`set_epoch`).

        Raises:
            InvalidLossError: ids are not integers or the lengths differ (checked at once,
                from shapes and dtypes only). NaN/inf losses and out-of-range ids are
                found at the next sync, on every rank alike.
        """
        self._check_process()
        t_ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids))
        t_losses = losses if isinstance(losses, torch.Tensor) else torch.as_tensor(np.asarray(losses))
        if t_ids.is_floating_point() or t_ids.is_complex() or t_ids.dtype == torch.bool:
            raise InvalidLossError(
                f"ids have dtype {t_ids.dtype}; sample ids must be integers (int64). Take them from the batch's "
                "'ids' field, never through the loss dtype"
            )
        if t_ids.ndim != 1 or t_losses.ndim != 1 or t_ids.shape[0] != t_losses.shape[0]:
            raise InvalidLossError(
                f"ids and losses must be 1-D of equal length (one loss per id), got shapes {tuple(t_ids.shape)} "
                f"and {tuple(t_losses.shape)}; compute the loss with reduction='none'"
            )
        n = int(t_ids.shape[0])
        if n:
            e = self.store.epoch if epoch is None else int(epoch)
            if e < 0:
                raise InvalidLossError(f"epoch={e} must be >= 0")
            blocking = self.device.type == "cpu"
            self._ids.append(t_ids.detach().to(self.device, torch.int64, non_blocking=not blocking, copy=True))
            self._losses.append(t_losses.detach().to(self.device, torch.float32, non_blocking=not blocking, copy=True))
            self._epochs.append(e)
            self._pending += n
            self.stats["max_buffered"] = max(self.stats["max_buffered"], self._pending)
        self._account(n)

    def record_skipped(self, count: int, reason: str = "mixed") -> None:
        """Count samples whose loss is not reported; ``"mixed"`` counts reach every replica."""
        self._check_process()
        count = check_int("count", count, 0)
        self._skipped[reason] = self._skipped.get(reason, 0) + count
        self._account(count)

    def _account(self, n: int) -> None:
        self._accounted += n
        if self.sync_every is None:
            return
        marks = self._accounted // self.sync_every
        # One sync per threshold crossed, so every rank runs the same number of collectives per step.
        while self._marks < marks:
            self._marks += 1
            self.sync()

    # -- the exchange -------------------------------------------------------------------
    def sync(self) -> None:
        """Exchange every rank's buffered reports and apply them all, by epoch, then rank (collective)."""
        self._check_process()
        ids = torch.cat(self._ids) if self._ids else torch.empty(0, dtype=torch.int64, device=self.device)
        losses = torch.cat(self._losses) if self._losses else torch.empty(0, dtype=torch.float32, device=self.device)
        epochs = np.repeat(np.asarray(self._epochs, dtype=np.int64), [int(t.shape[0]) for t in self._ids])
        skipped = self._skipped.pop("mixed", 0)
        for reason, count in self._skipped.items():
            self.store.record_skipped(count, reason)
        self._skipped = {}
        self._ids, self._losses, self._epochs, self._pending = [], [], [], 0
        lo, hi = (int(epochs.min()), int(epochs.max())) if epochs.size else (-1, -1)
        done = exchange_with_headers([int(ids.shape[0]), lo, hi, skipped], ids, losses, self._capacity, self.group)
        self._capacity = done.capacity
        headers, gathered = done.headers, done.reports
        counts = gathered.counts
        received = gathered.bytes_received
        self.stats["syncs"] += 1
        self.stats["collectives"] += done.collectives
        self.stats["bytes_received"] += received
        total_skipped = int(headers[:, 3].sum())
        if total_skipped:
            self.store.record_skipped(total_skipped, "mixed")
        if sum(counts) == 0:
            return
        live = headers[headers[:, 0] > 0]
        one_epoch = bool((live[:, 1] == live[:, 2]).all() and (live[:, 1] == live[0, 1]).all())
        if one_epoch:
            self.store.apply(gathered.ids, gathered.losses, int(live[0, 1]))
        else:
            parts = all_gather_varlen(torch.as_tensor(epochs, device=self.device), counts, self.group)
            all_epochs = torch.cat(parts).cpu().numpy()
            self.stats["collectives"] += 1
            self.stats["bytes_received"] += len(counts) * max(counts) * 8
            # Epoch by epoch (a sync can span the loader's epoch boundary: the last batches of
            # one epoch are reported after the next was frozen), each in rank order.
            order = np.argsort(all_epochs, kind="stable")
            all_epochs, ids_o, losses_o = all_epochs[order], gathered.ids[order], gathered.losses[order]
            cuts = np.flatnonzero(np.diff(all_epochs)) + 1
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, all_epochs.size]):
                self.store.apply(ids_o[a:b], losses_o[a:b], int(all_epochs[a]))
        self.stats["reports_synced"] += int(sum(counts))

    # -- snapshots ----------------------------------------------------------------------
    def snapshot(self, *, pin: bool | None = None) -> ScoreSnapshot:
        """Sync, freeze the scores and check every rank froze the same ones (collective).

        Args:
            pin: Persist the snapshot (default: on rank 0, which owns the store).

        Raises:
            DistributedError: if any rank's scores differ from rank 0's.
        """
        self.sync()
        snap = self.store.snapshot(pin=pin)
        self._check_same(snap.fingerprint, "score snapshot")
        return snap

    def pinned_snapshot(self, fingerprint: str) -> ScoreSnapshot:
        """Reload a snapshot rank 0 pinned (local: every rank reads it from the store)."""
        self._check_process()
        return self.store.pinned_snapshot(fingerprint)

    def _check_same(self, fingerprint: str, what: str) -> None:
        words = np.frombuffer(bytes.fromhex(fingerprint), dtype="<i8").tolist()
        gathered = all_gather_ints([int(w) for w in words], self.group)
        prints = [np.asarray(row, dtype="<i8").tobytes().hex() for row in gathered]
        bad = [r for r, fp in enumerate(prints) if fp != prints[0]]
        if bad:
            listing = ", ".join(f"rank {r}: {fp}" for r, fp in enumerate(prints))
            raise DistributedError(
                f"ranks {bad} froze a different {what} than rank 0 ({listing}); replicas diverged. Every rank "
                "must feed all its reports through DistributedScores (not the ScoreStore it wraps) and call its "
                "collective methods in the same order"
            )

    # -- checkpointing and lifecycle ----------------------------------------------------
    def flush(self) -> None:
        """Sync, then commit the scores to the store on rank 0 (collective)."""
        self.sync()
        self.store.flush()

    def state_dict(self) -> dict[str, Any]:
        """Sync, pin the scores on rank 0 and return its state, identical on every rank (collective)."""
        self.sync()
        state = self.store.state_dict()
        self._check_same(str(state["scores_fingerprint"]), "score state")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the pinned scores of ``state`` on every rank (collective; rank 0 first).

        Reports buffered before the call are discarded.

        Raises:
            DistributedError: on every rank when any rank failed (that rank raises its own error).
        """
        self._check_process()
        self._ids, self._losses, self._epochs, self._pending, self._skipped = [], [], [], 0, {}
        for turn in (True, False):  # rank 0 commits the pinned map before replicas read it
            error: BaseException | None = None
            if (self.rank == 0) == turn:
                try:
                    self.store.load_state_dict(state)
                except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the others
                    error = exc
            raise_together(error, self.group, "could not restore the score state")

    def close(self, *, sync: bool = True) -> None:
        """Sync the last reports (collective unless ``sync=False``), then close the local store.

        Pass ``sync=False`` when another rank may be gone (error handling): buffered
        reports are then dropped, and the collective cannot hang.
        """
        if os.getpid() != self._pid:
            return
        try:
            if sync:
                self.sync()
        finally:
            self.store.close()

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise DistributedError(
                f"DistributedScores was created in process {self._pid} and used in {os.getpid()}; it belongs to "
                "its training process (a forked worker cannot join the process group's collectives)"
            )

    def __repr__(self) -> str:
        return f"DistributedScores(rank={self.rank}/{self.world_size}, {self.store!r}, sync_every={self.sync_every})"
