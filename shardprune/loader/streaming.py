"""StreamingLoader: pruned epochs read straight from shards, so pruned bytes are never read.

The loader is three parts: :mod:`~shardprune.loader.epochs` (pure: snapshot + policy +
configuration -> decision, plan, stats), :mod:`~shardprune.loader.pipeline` (the worker
lifecycle: the torchdata graph that reads one pass), and this module, which drives them:
which epoch the next ``iter()`` serves, from which batch, and the resumable state.

Epochs advance by themselves:

* ``iter()`` serves the epoch chosen by the last :meth:`StreamingLoader.set_epoch` or
  :meth:`StreamingLoader.load_state_dict`, if one was chosen since the last ``iter()``;
  otherwise the epoch after the last one served (epoch 0 first), as MosaicML Streaming
  and litdata do. So a framework that never calls ``set_epoch`` (Lightning calls only
  ``sampler.set_epoch``) still gets a fresh, pruned epoch per pass. A pass abandoned
  halfway is not replayed: the next ``iter()`` starts the next epoch.
* Epochs at or past ``num_epochs`` are valid and read all data (every policy anneals).
* Step mode (``num_steps=``): one ``iter()`` is one stream of ``num_steps`` batches
  across epochs; the policy anneals by steps (see :mod:`~shardprune.loader.epochs`). A
  stream left halfway continues where it stopped on the next ``iter()``.

The next epoch is planned in a background thread while the current one drains, from the
reports made before the current epoch's last batch was requested (the exact rule, and how
a resume reproduces it, is in :mod:`~shardprune.loader.ahead`). The worker processes start
once per loader and serve every epoch (:mod:`~shardprune.loader.workers`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from shardprune.cache import open_cache
from shardprune.costmodel import CostModel, measure
from shardprune.dataset import ShardedDataset, open_dataset
from shardprune.dist.world import World, process_group_layout
from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.loader.ahead import DEFAULT_PLAN_AHEAD, PlanAhead, Prepared, ahead_trigger
from shardprune.loader.adapters import EpochSampler
from shardprune.loader.collate import Batch
from shardprune.loader.decode import Transform
from shardprune.loader.epochs import EpochPlanner, PlannedEpoch, full_batches
from shardprune.loader.fetch import UnitFetcher, UnitResult
from shardprune.loader.ioplan import ReadPlan, ReadUnit
from shardprune.loader.options import DEFAULT_MAX_BLOCK, ReadOptions
from shardprune.loader.order import BatchAssembler
from shardprune.loader.pipeline import (
    FORKSERVER_PRELOAD,
    FORKSERVER_PRELOAD_REMOTE,
    JOIN_S,
    EpochPipeline,
    preload_forkserver,
)
from shardprune.loader.plan import DEFAULT_SHUFFLE_BLOCK, EpochPlan, PlanConfig
from shardprune.loader.shuffle import default_shuffle, is_preshuffled
from shardprune.loader.filter import FilterSpec, filter_config, filter_ids
from shardprune.loader.stats import EpochStats
from shardprune.loader.workers import WorkerPool
from shardprune.policies import make_policy
from shardprune.policies.decision import EpochDecision, Policy
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.state import StateSchema, check_config, digest, jsonable
from shardprune.validate import check_bool, check_choice, check_int

#: The loader's state (:meth:`StreamingLoader.state_dict`). Version 2 added ``step`` and
#: ``next_snapshot_fingerprint`` and allows a state taken before any epoch was planned
#: (null fingerprints).
LOADER_STATE = StateSchema(
    "loader",
    2,
    frozenset(
        {
            "version",
            "config",
            "config_fingerprint",
            "epoch",
            "batches_yielded",
            "step",
            "snapshot_fingerprint",
            "plan_fingerprint",
            "next_snapshot_fingerprint",
        }
    ),
)
STATE_VERSION = LOADER_STATE.version
STATE_KEYS = LOADER_STATE.keys
MP_CONTEXTS = ("forkserver", "spawn")
__all__ = ["StreamingLoader", "SnapshotSource"]


class SnapshotSource(Protocol):
    """Anything that freezes the current scores: a ScoreStore or a distributed wrapper."""

    def snapshot(self) -> ScoreSnapshot: ...


class StreamingLoader:
    """Iterate pruned epochs of a sharded dataset in deterministic, resumable batches.

    Args:
        dataset: A :class:`ShardedDataset`, or its URL/path (opened with ``storage_options``).
        batch_size: Samples per batch (>= 1).
        policy: A :class:`Policy`, a registered policy name (built with default
            parameters), or None / ``"full"`` to keep everything.
        store: Anything with ``.snapshot() -> ScoreSnapshot`` (a ScoreStore or the
            distributed wrapper), or None for never-seen scores every epoch.
        num_epochs: Epochs of the run (>= 1); policies anneal relative to it. Epochs past
            it are allowed and read all data. Give this or ``num_steps``.
        num_steps: Batches of the whole run (>= 1): step mode, one stream across epochs,
            annealing by steps. Give this or ``num_epochs``.
        seed: Philox key for shard order, shuffle buffer and Mixup (default 0).
        world: Rank layout; None detects it (torch.distributed, then RANK/WORLD_SIZE).
        num_workers: Fetch processes (default 0: fetch in this process).
        shuffle_window: Shards read round-robin at once (default 4).
        shuffle_buffer: Sample shuffle buffer in slots (default 1024).
        shuffle: Shuffle mode (``"global"``, ``"block"``, ``"window"``; see
            :mod:`shardprune.loader.shuffle`); default ``"window"`` for a dataset the converter
            shuffled, else ``"global"`` local and ``"block"`` remote (``default_shuffle``).
        shuffle_block: Adjacent kept samples per block of the ``"block"`` mode (default 12).
        drop_last: True: equal full batches on every rank, the remainder trimmed (never
            read). False: ranks padded with weight-0 repeats to equal counts.
        transform: ``fn(sample) -> sample`` run after decoding, in the workers (must be
            picklable: a module-level function or class instance).
        fields: Field names to load (default all).
        decode: Decode fields (images, npy, ints, text); False yields raw bytes (default True).
        max_gap: Largest gap in bytes always read through to merge two range requests
            (default 0: pruned samples are never read).
        gap_budget: Further gaps read through, smallest first and only below the storage's
            break-even gap (``dataset.storage.cost``), as a fraction of the planned bytes,
            to save requests (default 0 local, 0.1 remote).
        max_block: Largest worker read unit in bytes (default 4 MiB); on remote storage its
            requests are split to the cost model's size (``dataset.storage.cost``).
        io_concurrency: Range requests in flight per worker (default 1 local, 64 remote).
        cost: The storage's request latency and per-connection bandwidth, which set the
            break-even gap and the request size: a :class:`~shardprune.costmodel.CostModel`,
            ``"measure"`` (remote only: time a few requests of the largest shard when the
            loader is made, :func:`shardprune.costmodel.measure`, 6 requests), or None
            (default: ``dataset.storage.cost``, 20 ms and 50 MB/s remote, none local).
        prefetch_batches: Batches assembled ahead of the training loop (default 2; 0: none).
        pin_memory: Pin batches for fast CUDA copies (default: when CUDA is available).
        mixup: Apply the policy's Mixup (``decision.mixup_prob``); False never blends.
        storage_options: fsspec options when ``dataset`` is a remote URL.
        multiprocessing_context: ``"forkserver"`` (default) or ``"spawn"`` for workers.
        plan_ahead: Batches before the end of an epoch at which the next one is frozen and
            planned in the background (default 64, at most a sixteenth of the epoch; see
            :mod:`~shardprune.loader.ahead`). 0: plan each epoch when it starts, from every
            report made before then; use it when something requests batches from the loader
            on another thread (a ``torchdata.nodes.Prefetcher`` over :func:`as_node`), whose
            requests run ahead of the reports by a timing-dependent amount.
        filter: Samples to train on, from manifest columns: an expression such as
            ``"width >= 256 and label < 10"`` or a bool mask over sample ids (default
            None: all). Filtered-out samples are never planned or read; the policy
            decides over the filtered samples (:mod:`shardprune.loader.filter`).
        cache_dir: Local folder caching fetched samples of an object-storage dataset across
            epochs, shared by workers, loaders and ranks of the node (default None: no cache;
            a local dataset refuses it). See :mod:`shardprune.cache`.
        cache_limit: Most disk the cache may use: bytes, or ``"20GB"`` / ``"500MiB"``;
            whole shards are evicted, other datasets' first, then this dataset's most recently
            used (:func:`shardprune.cache.eviction_order`; default None: no limit).

    Epochs: see the module docstring. Each batch carries ``epoch`` (int), which
    :func:`shardprune.weighted_loss` passes on to the score store with the losses.

    Determinism: the batches of an epoch (ids, order, weights, Mixup draws) are a pure
    function of the seed, the epoch (and in step mode the step it starts at), the score
    snapshot, the policy, the rank layout and the batch/shuffle/drop_last settings. They
    do not depend on ``num_workers``, the I/O settings, or on resuming.

    State format (:meth:`state_dict`, schema :data:`LOADER_STATE`), JSON-able:
    ``{"version": 2, "config" (dataset fingerprint, sizes, seed, rank layout,
    batch/shuffle settings, num_epochs/num_steps, policy state), "config_fingerprint",
    "epoch", "batches_yielded" (batches of the epoch handed to the caller: a position in
    the plan, not a sample count), "step" (batches of the stream handed out, step mode;
    null in epoch mode), "snapshot_fingerprint", "plan_fingerprint" (both null when no
    epoch was planned yet), "next_snapshot_fingerprint" (the snapshot the next epoch is
    being planned from, once the epoch's last batch was requested; else null)}``. Loading re-plans the epoch from the same snapshot
    (reloaded with ``store.pinned_snapshot`` when the store has it) and refuses a state
    from another configuration or snapshot with :class:`CheckpointMismatchError`. After
    loading a state whose epoch was complete, ``iter()`` serves the next epoch.
    Reading the state (and ``len()``) plans nothing and calls no collective.
    """

    def __init__(
        self,
        dataset: ShardedDataset | str | os.PathLike[str],
        *,
        batch_size: int,
        policy: Policy | str | None = None,
        store: SnapshotSource | None = None,
        num_epochs: int | None = None,
        num_steps: int | None = None,
        seed: int = 0,
        world: World | None = None,
        num_workers: int = 0,
        shuffle_window: int = 4,
        shuffle_buffer: int = 1024,
        shuffle: str | None = None,
        shuffle_block: int = DEFAULT_SHUFFLE_BLOCK,
        drop_last: bool = True,
        transform: Transform | None = None,
        fields: list[str] | tuple[str, ...] | None = None,
        decode: bool = True,
        max_gap: int | None = None,
        gap_budget: float | None = None,
        max_block: int = DEFAULT_MAX_BLOCK,
        io_concurrency: int | None = None,
        cost: CostModel | str | None = None,
        prefetch_batches: int = 2,
        pin_memory: bool | None = None,
        mixup: bool = True,
        storage_options: dict[str, Any] | None = None,
        multiprocessing_context: str = "forkserver",
        plan_ahead: int = DEFAULT_PLAN_AHEAD,
        filter: FilterSpec = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
    ) -> None:
        if (num_epochs is None) == (num_steps is None):
            raise ConfigError(
                f"num_epochs={num_epochs!r}, num_steps={num_steps!r}: pass exactly one, num_epochs= (epochs of "
                "the run) or num_steps= (batches of the run, one stream across epochs)"
            )
        self.num_epochs = None if num_epochs is None else check_int("num_epochs", num_epochs, 1)
        self.num_steps = None if num_steps is None else check_int("num_steps", num_steps, 1)
        self.dataset = dataset if isinstance(dataset, ShardedDataset) else open_dataset(dataset, storage_options)
        self.filter, self.filter_ids = filter, filter_ids(filter, self.dataset.manifest)
        self.world = World.detect() if world is None else world
        self._world_detected = world is None
        if not isinstance(self.world, World):
            raise ConfigError(f"world={world!r} must be a shardprune.dist.world.World or None")
        self.seed = check_int("seed", seed, 0)
        self.cfg = PlanConfig(
            seed=self.seed,
            batch_size=check_int("batch_size", batch_size, 1),
            rank=self.world.rank,
            world_size=self.world.world_size,
            shuffle_window=check_int("shuffle_window", shuffle_window, 1),
            shuffle_buffer=check_int("shuffle_buffer", shuffle_buffer, 1),
            drop_last=bool(drop_last),
            shuffle=shuffle if shuffle is not None else default_shuffle(
                is_preshuffled(self.dataset.header.source), self.dataset.storage.is_local
            ),
            shuffle_block=shuffle_block,
        )
        if policy is None:
            policy = "full"
        self.policy: Policy = make_policy(policy) if isinstance(policy, str) else policy
        if not callable(getattr(self.policy, "decide", None)):
            raise ConfigError(f"policy={policy!r} must be a Policy, a policy name or None")
        if store is not None and not callable(getattr(store, "snapshot", None)):
            raise ConfigError(f"store={store!r} has no snapshot() method; pass a ScoreStore or None")
        self.store = store
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.prefetch_batches = check_int("prefetch_batches", prefetch_batches, 0)
        local = self.dataset.storage.is_local
        self.reads = ReadOptions.for_storage(
            local, max_gap=max_gap, gap_budget=gap_budget, max_block=max_block, io_concurrency=io_concurrency,
            cost=self._cost_model(cost),
        )
        if multiprocessing_context not in MP_CONTEXTS:
            raise ConfigError(
                f"multiprocessing_context={multiprocessing_context!r} is not one of {MP_CONTEXTS}; fork is "
                "refused because the parent's threads and object-store clients do not survive it"
            )
        self.multiprocessing_context = check_choice("multiprocessing_context", multiprocessing_context, MP_CONTEXTS)
        if self.num_workers > 0 and multiprocessing_context == "forkserver":
            preload_forkserver(FORKSERVER_PRELOAD + (() if local else FORKSERVER_PRELOAD_REMOTE))
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else check_bool("pin_memory", pin_memory)
        if self.pin_memory and not torch.cuda.is_available():
            raise ConfigError(
                "pin_memory=True needs CUDA, and torch.cuda.is_available() is False here; "
                "pass pin_memory=None (pin when CUDA is available) or False"
            )
        self.mixup = bool(mixup)
        # A transform may rename or drop fields, so only untransformed batches promise every field.
        wanted = tuple(self.dataset.header.fields) if fields is None else tuple(fields)
        self._batch_fields: tuple[str, ...] = () if transform is not None else wanted
        self.plan_ahead = check_int(
            "plan_ahead", plan_ahead, 0, fix="0 plans each epoch when it starts (for consumers that prefetch on a thread)"
        )
        self.fetcher = UnitFetcher(
            self.dataset,
            decode=decode,
            transform=transform,
            io_threads=self.reads.io_concurrency,
            fields=None if fields is None else tuple(fields),
            pack=self.num_workers > 0,
            cache=open_cache(self.dataset, cache_dir, cache_limit),
        )
        horizon = self.num_epochs if self.num_epochs is not None else self.num_steps
        assert horizon is not None
        self.planner = EpochPlanner(self.dataset, self.policy, self.cfg, horizon, self.filter_ids)
        self._epoch: PlannedEpoch | None = None  # the epoch planned last
        self._cursor = 0  # batches of it handed out
        self._step = 0  # batches of the stream handed out (step mode)
        self._next_epoch = 0  # what an iter() without set_epoch serves
        self._chosen = False  # set_epoch / load_state_dict chose what the next iter() serves
        self._resume_pending = False  # load_state_dict was the last call: set_epoch(same) keeps its cursor
        self._active: EpochPipeline | None = None
        self._stopping: threading.Thread | None = None
        self._pool: WorkerPool | None = None
        self._ahead = PlanAhead(self._plan_with_units, self._open_early)
        self._first_units: Prepared | None = None

    def _cost_model(self, cost: CostModel | str | None) -> CostModel | None:
        """``cost`` resolved: the storage's default, the model given, or one measured now."""
        if cost is None:
            return self.dataset.storage.cost
        if isinstance(cost, CostModel):
            return cost
        if cost != "measure":
            raise ConfigError(f"cost={cost!r} must be a shardprune.costmodel.CostModel, 'measure' or None")
        storage = self.dataset.storage
        if storage.is_local:
            raise ConfigError(
                f"cost='measure' times object-store requests, and {storage.url} is local (reads are system calls, "
                "nothing is bridged or split); pass cost=None"
            )
        if storage.chained:
            raise ConfigError(
                f"cost='measure' times object-store requests, and {storage.url} is a chained URL whose reads may "
                "go through a local copy (simplecache:: fetches whole files); pass a CostModel(latency_s=..., "
                "bandwidth=...) or cost=None"
            )
        largest = max(self.dataset.header.shards, key=lambda shard: shard.bytes, default=None)
        if largest is None or largest.bytes == 0:
            return storage.cost
        return measure(storage, largest.path, largest.bytes)

    # -- what the current epoch is ----------------------------------------------------------
    @property
    def plan(self) -> EpochPlan | None:
        """The plan of the epoch planned last (None before any)."""
        return None if self._epoch is None else self._epoch.plan

    @property
    def decision(self) -> EpochDecision | None:
        """The policy's decision for the epoch planned last."""
        return None if self._epoch is None else self._epoch.decision

    @property
    def snapshot(self) -> ScoreSnapshot | None:
        """The score snapshot the epoch planned last was decided from."""
        return None if self._epoch is None else self._epoch.snapshot

    @property
    def epoch_stats(self) -> EpochStats:
        """Counters of the epoch planned last (zeros before any)."""
        return EpochStats() if self._epoch is None else self._epoch.stats

    @property
    def epoch(self) -> int:
        """The epoch being served, or the one the next ``iter()`` serves when none is running."""
        if self._epoch is not None and (self._chosen or self._active is not None):
            return self._epoch.epoch
        return self._next_epoch

    # -- configuration and planning -------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What an epoch plan depends on besides the epoch and the snapshot (JSON-able)."""
        state = self.policy.state_dict() if callable(getattr(self.policy, "state_dict", None)) else {}
        return {
            "dataset": self.dataset.fingerprint,
            "num_samples": len(self.dataset),
            "num_epochs": self.num_epochs,
            "num_steps": self.num_steps,
            "seed": self.seed,
            "batch_size": self.cfg.batch_size,
            "rank": self.cfg.rank,
            "world_size": self.cfg.world_size,
            "shuffle_window": self.cfg.shuffle_window,
            "shuffle_buffer": self.cfg.shuffle_buffer,
            "shuffle": self.cfg.shuffle,
            "shuffle_block": self.cfg.shuffle_block,
            "drop_last": self.cfg.drop_last,
            "policy": jsonable(state),
            "mixup": self.mixup,
            "plan_ahead": self.plan_ahead,
            "filter": filter_config(self.filter, self.filter_ids),
        }

    def _freeze(self) -> ScoreSnapshot:
        n = len(self.dataset)
        if self.store is None:
            return ScoreSnapshot.fresh(n)
        snap = self.store.snapshot()
        if not isinstance(snap, ScoreSnapshot) or len(snap) != n:
            got = len(snap) if isinstance(snap, ScoreSnapshot) else type(snap).__name__
            raise ConfigError(f"store.snapshot() returned {got} scores; the dataset has {n} samples")
        return snap

    def _plan_with_units(self, epoch: int, clock: int, snapshot: ScoreSnapshot) -> Prepared:
        planned = self.planner.plan(epoch, clock, snapshot)
        return planned, self.planner.read_units(planned.plan, 0, self.reads)

    def _check_world(self) -> None:
        """Refuse to plan when torch.distributed places this process elsewhere than the
        rank layout the loader was made for (detected before the process group existed)."""
        layout = process_group_layout() if self._world_detected else None
        if layout is None:
            return
        rank, size = layout
        if (rank, size) != (self.world.rank, self.world.world_size):
            raise ConfigError(
                f"this loader was made for rank {self.world.rank} of {self.world.world_size} (detected when it was "
                f"constructed, before torch.distributed was initialised), but this process now runs as rank {rank} "
                f"of {size}: every rank would read the wrong share of each epoch. Make the loader (and a "
                "DistributedScores store) after the process group exists: under Lightning's DDP in "
                "LightningModule.setup() (see the README's Lightning section); or pass world=World(rank, world_size)"
            )

    def _open_early(self, prepared: Prepared) -> None:
        """The next epoch is planned: let the workers read its first units behind this epoch's last."""
        pool = self._pool
        if pool is not None:
            pool.open_early(prepared[1])

    def _begin(self, epoch: int, snapshot: ScoreSnapshot | None = None) -> PlannedEpoch:
        """Plan ``epoch`` and stand at its first batch.

        The scores: ``snapshot`` if given (a resume), else the epoch prepared in the
        background if it is this one (see :mod:`~shardprune.loader.ahead`), else frozen now.
        """
        self._check_world()
        clock = epoch if self.num_steps is None else self._step
        prepared = self._ahead.take(epoch, clock) if snapshot is None else None
        self._ahead.clear()
        if prepared is not None:
            planned = prepared[0]
            self._first_units = prepared
        else:
            planned = self.planner.plan(epoch, clock, self._freeze() if snapshot is None else snapshot)
        self.shutdown()
        self._epoch, self._cursor = planned, 0
        return planned

    def _prepare_next(self, planned: PlannedEpoch) -> None:
        """At the request of batch :func:`ahead_trigger` of ``planned``: freeze the scores, plan the next epoch."""
        if self.num_steps is None:
            assert self.num_epochs is not None
            if planned.epoch + 1 >= self.num_epochs:
                return  # the run's last epoch: nothing to prepare
            clock = planned.epoch + 1
        else:
            clock = self._step + planned.plan.num_batches - self._cursor  # the step the next epoch starts at
            if clock >= self.num_steps:
                return  # the stream ends within this epoch
        self._ahead.start(planned.epoch + 1, clock, self._freeze())

    def set_epoch(self, epoch: int) -> None:
        """Freeze the scores, decide what to keep and plan ``epoch`` (>= 0) for the next ``iter()``.

        Optional: without it each ``iter()`` serves the next epoch. Right after
        :meth:`load_state_dict`, ``set_epoch`` of the checkpoint's epoch keeps the resume
        point (the usual ``for epoch in range(start, E): set_epoch(epoch)`` loop then
        continues the epoch instead of replaying it); any other call plans afresh.

        Raises:
            ConfigError: a negative epoch, or a loader in step mode (``num_steps``), whose
                stream advances its epochs itself.
        """
        epoch = check_int("epoch", epoch, 0)
        if self.num_steps is not None:
            raise ConfigError(
                f"set_epoch({epoch}) on a loader with num_steps={self.num_steps}: step mode runs one stream "
                "across epochs and advances them itself; do not call set_epoch, or pass num_epochs= instead"
            )
        resumed, self._resume_pending = self._resume_pending, False
        self._chosen = True
        if resumed and self._epoch is not None and self._epoch.epoch == epoch:
            return
        self._begin(epoch)

    @property
    def sampler(self) -> EpochSampler:
        """What Lightning and Accelerate call ``set_epoch`` on (``dataloader.sampler.set_epoch``)."""
        return EpochSampler(self)

    def __len__(self) -> int:
        """Batches of the epoch planned last; before any, of an epoch that keeps everything.

        Plans nothing: the unplanned figure is an upper bound (pruning only removes batches),
        computed from the dataset size and the batch and rank layout. In step mode, the
        stream's length ``num_steps``.
        """
        if self.num_steps is not None:
            return self.num_steps
        if self._epoch is None:
            return full_batches(len(self.dataset), self.cfg)
        return self._epoch.plan.num_batches

    def read_units(self, start_batch: int = 0) -> ReadPlan:
        """The range reads serving batches ``start_batch..`` of the epoch planned last, in read order."""
        if self._epoch is None:
            raise ConfigError("no epoch is planned yet; call set_epoch(epoch) (or iterate) before read_units()")
        return self.planner.read_units(self._epoch.plan, start_batch, self.reads)

    # -- iteration ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        if self.num_steps is not None:
            return self._stream()
        return self._one_epoch()

    def _one_epoch(self) -> Iterator[Batch]:
        if not self._chosen:
            self._begin(self._next_epoch)
        self._chosen = self._resume_pending = False
        planned = self._epoch
        assert planned is not None
        self._next_epoch = planned.epoch + 1
        yield from self._pass(planned, None)

    def _stream(self) -> Iterator[Batch]:
        steps = self.num_steps
        assert steps is not None
        while self._step < steps:
            if not self._chosen:
                planned = self._begin(self._next_epoch)
                if planned.plan.num_batches == 0:
                    raise ConfigError(
                        f"epoch {planned.epoch} has no batch (batch_size={self.cfg.batch_size}, "
                        f"{planned.plan.kept_total} samples kept over {self.cfg.world_size} rank(s)); step mode "
                        "needs at least one per epoch: lower batch_size or use drop_last=False"
                    )
            self._chosen = True  # until the epoch is exhausted, a new iter() continues it
            current = self._epoch
            assert current is not None
            planned = current
            self._next_epoch = planned.epoch + 1
            yield from self._pass(planned, steps - self._step)
            if self._cursor < planned.plan.num_batches:
                return  # the stream's budget ended inside this epoch
            self._chosen = False

    def _count(self, result: UnitResult) -> None:
        assert self._epoch is not None
        s = self._epoch.stats
        s.bytes_read += result.bytes_read
        s.requests += result.requests
        s.gap_bytes += result.gap_bytes
        s.cache_hits += result.cache_hits
        s.cache_bytes += result.cache_bytes

    def _pass(self, planned: PlannedEpoch, limit: int | None) -> Iterator[Batch]:
        """Yield batches ``cursor..`` of ``planned`` (at most ``limit``), moving the cursor."""
        plan, start = planned.plan, self._cursor
        self.shutdown()
        stats = planned.stats
        # The I/O counters describe this pass only: a replayed or resumed epoch starts at zero.
        stats.bytes_read = stats.gap_bytes = stats.requests = stats.cache_hits = stats.cache_bytes = 0
        stats.batches = start
        if start >= plan.num_batches or limit == 0:
            return
        decision = planned.decision
        header = self.dataset.header
        assembler = BatchAssembler(
            plan,
            seed=self.seed,
            mixup_prob=float(decision.mixup_prob) if self.mixup else 0.0,
            mixup_alpha=float(decision.mixup_alpha),
            num_classes=header.num_classes,
            keep_label=header.num_classes is not None,
            fields=self._batch_fields,
        )
        cached, self._first_units = self._first_units, None
        units = cached[1] if cached is not None and cached[0] is planned and start == 0 else self.read_units(start)
        pipeline = EpochPipeline(
            units,
            plan,
            start,
            fetcher=self.fetcher,
            assembler=assembler,
            pool=self._workers(),
            pin_memory=self.pin_memory,
            prefetch_batches=self.prefetch_batches,
            on_result=self._count,
        )
        self._active = pipeline
        batches = pipeline.batches()
        try:
            # The plan says how many batches there are: no waiting for the graph's end marker.
            while self._cursor < plan.num_batches:
                if self._cursor == ahead_trigger(plan.num_batches, self.plan_ahead):
                    self._prepare_next(planned)
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                self._cursor += 1
                self._step += 1
                stats.batches = self._cursor
                yield batch
                if limit is not None and self._cursor - start >= limit:
                    return
        finally:
            if self._active is pipeline:
                self._active = None
            if self._cursor >= plan.num_batches:
                # Every batch was handed out, so the graph's threads are idle or finishing work
                # nobody takes (a dropped last partial batch): joining them (torchdata polls every
                # 0.1 s) need not hold up the training thread. close() and interpreter exit wait
                # for this thread (a daemon thread inside a torch operator at exit aborts the process).
                self._stopping = threading.Thread(
                    target=pipeline.stop, args=(JOIN_S,), name="shardprune-stop", daemon=True
                )
                self._stopping.start()
            else:
                pipeline.stop()

    def _workers(self) -> WorkerPool | None:
        """The persistent worker pool (started on first use), or None without workers."""
        if self.num_workers == 0:
            return None
        if self._pool is None:
            self._pool = WorkerPool(self.fetcher, self.num_workers, self.multiprocessing_context)
            # Garbage collection of a loader that was never closed still stops its workers.
            weakref.finalize(self, self._pool.close)
        return self._pool

    def shutdown(self, join_s: float = 0.0) -> None:
        """Stop the running pass's threads (the worker processes stay for the next pass).

        Args:
            join_s: Seconds to wait for threads still finishing an item (a transform) to end.
        """
        active, self._active = self._active, None
        if active is not None:
            active.stop(join_s)

    def close(self) -> None:
        """Stop the pipeline and the worker processes, and close this process's file handles.

        Returns once the pipeline's threads have ended (each finishes the item in hand, up to
        ``JOIN_S`` seconds), so no thread of the loader runs after it.
        """
        self.shutdown(JOIN_S)
        if self._stopping is not None:
            self._stopping.join(JOIN_S)  # the last pass's graph, stopping in the background
            self._stopping = None
        self._ahead.close()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self.fetcher.close()
        self.dataset.storage.close()
        if self.fetcher.cache is not None:
            self.fetcher.cache.close()

    def __enter__(self) -> StreamingLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resume point: the epoch and the batches handed out so far (see the class doc).

        Plans nothing, freezes nothing and calls no collective.
        """
        config = self.config()
        planned = self._epoch
        step = None if self.num_steps is None else self._step
        if planned is None:
            return LOADER_STATE.make(
                config=config,
                config_fingerprint=digest(config),
                epoch=self._next_epoch,
                batches_yielded=0,
                step=step,
                snapshot_fingerprint=None,
                plan_fingerprint=None,
                next_snapshot_fingerprint=None,
            )
        ahead = self._ahead.snapshot_for(planned.epoch + 1)
        return LOADER_STATE.make(
            config=config,
            config_fingerprint=digest(config),
            epoch=planned.epoch,
            batches_yielded=self._cursor,
            step=step,
            snapshot_fingerprint=planned.snapshot.fingerprint,
            plan_fingerprint=planned.plan.fingerprint(),
            next_snapshot_fingerprint=None if ahead is None else ahead.fingerprint,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a :meth:`state_dict`: the next iteration yields the remaining batches.

        Another rank's state of the same run is accepted: every rank yields the same number
        of batches of each epoch, so at a checkpoint taken at one step of synchronous
        training all ranks stand at the same epoch, batch and scores, and this rank resumes
        its own share there. Frameworks that save one process's state and load it on every
        rank (Accelerate's ``register_for_checkpointing``, Lightning) need this. Its own
        state is checked further: the plan it rebuilds must have the checkpoint's fingerprint.

        Raises:
            CheckpointMismatchError: the state comes from another configuration (world size
                included), dataset, policy or score snapshot (the message shows checkpoint
                and current values).
        """
        state = LOADER_STATE.check(state)
        config = self.config()
        own = state["config"].get("rank") == config["rank"]
        check_config("the loader checkpoint", state["config"], config, ignore=("rank",))
        epoch = check_int("epoch", state["epoch"], 0, error=CheckpointMismatchError)
        step = state["step"]
        if self.num_steps is not None:
            step = check_int("step", step, 0, self.num_steps, error=CheckpointMismatchError)
        self.shutdown()
        if state["plan_fingerprint"] is None:
            self._epoch, self._cursor, self._next_epoch = None, 0, epoch
            self._step = step or 0
            self._chosen = self._resume_pending = False
            return
        cursor = state["batches_yielded"]
        if self.num_steps is not None:
            self._step = step - cursor if isinstance(cursor, int) and cursor <= step else -1
            if self._step < 0:
                raise CheckpointMismatchError(f"batches_yielded={cursor!r} (in checkpoint) exceeds step={step}")
        planned = self._begin(epoch, self._snapshot_for(str(state["snapshot_fingerprint"])))
        plan = planned.plan
        if own and plan.fingerprint() != state["plan_fingerprint"]:
            raise CheckpointMismatchError(
                f"epoch {epoch} plan {state['plan_fingerprint']} (in checkpoint) vs {plan.fingerprint()} (now) "
                "from the same scores and configuration; the policy or planner code changed"
            )
        if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor <= plan.num_batches:
            raise CheckpointMismatchError(
                f"batches_yielded={cursor!r} (in checkpoint) is outside 0..{plan.num_batches} (now)"
            )
        self._cursor = cursor
        self._step += cursor
        planned.stats.batches = cursor
        self._resume_pending = True
        complete = cursor == plan.num_batches
        # A finished epoch is not served again: the next iter() moves on to the one after it.
        self._chosen = not complete
        self._next_epoch = epoch + 1 if complete else epoch
        following = state["next_snapshot_fingerprint"]
        if following is not None:
            # The snapshot of the next epoch was taken before the checkpoint: plan from it again.
            clock = epoch + 1 if self.num_steps is None else self._step + plan.num_batches - cursor
            self._ahead.start(epoch + 1, clock, self._snapshot_for(str(following)))

    def _snapshot_for(self, fingerprint: str) -> ScoreSnapshot:
        if self.store is None:
            snap = ScoreSnapshot.fresh(len(self.dataset))
        else:
            pinned: Callable[[str], ScoreSnapshot] | None = getattr(self.store, "pinned_snapshot", None)
            snap = pinned(fingerprint) if callable(pinned) else self._freeze()
        if snap.fingerprint != fingerprint:
            raise CheckpointMismatchError(
                f"score snapshot {fingerprint} (in checkpoint) vs {snap.fingerprint} (now); restore the score "
                "store from the same checkpoint before the loader"
            )
        return snap

