"""StreamingLoader: pruned epochs read straight from shards, so pruned bytes are never read.

Per epoch (:meth:`StreamingLoader.set_epoch`): freeze the score snapshot, ask the policy
for keep decisions, plan this rank's slots (:mod:`shardprune.loader.plan`), and group
the slots into range reads (:mod:`shardprune.loader.ioplan`). Iterating runs a
``torchdata.nodes`` pipeline::

    IterableWrapper(read units)                       # read order, from the resume cursor
      -> ParallelMapper(UnitFetcher, num_workers)    # read + CRC + decode + transform
      -> PlanOrder                                   # back to plan order, cut into batches
      -> Mapper(BatchAssembler)                      # collate, weights, Mixup
      -> PinMemory (CUDA) -> Prefetcher(prefetch_batches)

With ``num_workers=0`` the fetch runs in the training process; otherwise in worker
processes started with ``multiprocessing_context`` (forkserver by default), which
receive only the pickled dataset (URL and manifest arrays), options and the caller's
``AWS_*`` / ``FSSPEC_*`` environment variables, never a score store or an fsspec client.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torchdata.nodes import BaseNode, IterableWrapper, Mapper, ParallelMapper, PinMemory, Prefetcher

from shardprune.dataset import ShardedDataset, open_dataset
from shardprune.dist.world import World
from shardprune.errors import CheckpointMismatchError, ConfigError, FetchError
from shardprune.loader.collate import Batch
from shardprune.loader.decode import Transform
from shardprune.loader.fetch import UnitFetcher, UnitResult
from shardprune.loader.ioplan import ReadPlan, ReadUnit, plan_reads
from shardprune.loader.order import BatchAssembler, PlanOrder
from shardprune.loader.plan import EpochPlan, PlanConfig, make_plan
from shardprune.loader.stats import EpochStats
from shardprune.policies import make_policy
from shardprune.policies.decision import EpochDecision, Policy
from shardprune.scores.snapshot import ScoreSnapshot

STATE_VERSION = 1
#: Keys of :meth:`StreamingLoader.state_dict`.
STATE_KEYS = frozenset(
    {"version", "config", "config_fingerprint", "epoch", "batches_yielded", "snapshot_fingerprint", "plan_fingerprint"}
)
#: Defaults of the I/O planner, by storage kind. ``max_gap`` 0: a pruned sample is never
#: read through by default, whatever its size.
LOCAL_MAX_GAP = 0
REMOTE_MAX_GAP = 0
#: Gaps read through on object storage, smallest first and only below the storage cost
#: model's break-even gap, as a fraction of the planned bytes (see
#: :func:`~shardprune.loader.ioplan.plan_reads`): at most 10% more bytes for fewer requests.
LOCAL_GAP_BUDGET = 0.0
REMOTE_GAP_BUDGET = 0.1
DEFAULT_MAX_BLOCK = 4 * 1024 * 1024
LOCAL_IO_CONCURRENCY = 1
REMOTE_IO_CONCURRENCY = 64
MP_CONTEXTS = ("forkserver", "spawn")
#: Modules the forkserver imports once before it forks any worker, so that each worker
#: starts with torch and the fetch code loaded instead of importing them itself (seconds
#: per worker and per epoch on a busy machine).
FORKSERVER_PRELOAD = ("numpy", "torch", "shardprune.loader.fetch")
#: Added for remote datasets: the object-store client stack (a missing one is skipped).
FORKSERVER_PRELOAD_REMOTE = ("fsspec", "s3fs", "aiobotocore.session")


class SnapshotSource(Protocol):
    """Anything that freezes the current scores: a ScoreStore or a distributed wrapper."""

    def snapshot(self) -> ScoreSnapshot: ...


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ConfigError(f"{name}={value!r} must be an int >= {low}")
    return int(value)


class StreamingLoader:
    """Iterate pruned epochs of a sharded dataset in deterministic, resumable batches.

    Args:
        dataset: A :class:`ShardedDataset`, or its URL/path (opened with ``storage_options``).
        batch_size: Samples per batch (>= 1).
        policy: A :class:`Policy`, a registered policy name (built with default
            parameters), or None / ``"full"`` to keep everything.
        store: Anything with ``.snapshot() -> ScoreSnapshot`` (a ScoreStore or the
            distributed wrapper), or None for never-seen scores every epoch.
        num_epochs: Epochs of the run (>= 1); policies anneal relative to it.
        seed: Philox key for shard order, shuffle buffer and Mixup (default 0).
        world: Rank layout; None detects it (torch.distributed, then RANK/WORLD_SIZE).
        num_workers: Fetch processes (default 0: fetch in this process).
        shuffle_window: Shards read round-robin at once (default 4).
        shuffle_buffer: Sample shuffle buffer in slots (default 1024).
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
        prefetch_batches: Batches assembled ahead of the training loop (default 2; 0: none).
        pin_memory: Pin batches for fast CUDA copies (default: when CUDA is available).
        mixup: Apply the policy's Mixup (``decision.mixup_prob``); False never blends.
        storage_options: fsspec options when ``dataset`` is a remote URL.
        multiprocessing_context: ``"forkserver"`` (default) or ``"spawn"`` for workers.

    Determinism: the batches of an epoch (ids, order, weights, Mixup draws) are a pure
    function of the seed, the epoch, the score snapshot, the policy, the rank layout and
    the batch/shuffle/drop_last settings. They do not depend on ``num_workers``, the
    I/O settings, or on resuming.

    State format (:meth:`state_dict`), JSON-able: ``{"version", "config" (dataset
    fingerprint, sizes, seed, rank layout, batch/shuffle settings, policy state),
    "config_fingerprint", "epoch", "batches_yielded" (batches handed to the caller in
    the epoch: a position in the plan, not a sample count), "snapshot_fingerprint",
    "plan_fingerprint"}``. Loading re-plans the epoch from the same snapshot (reloaded
    with ``store.pinned_snapshot`` when the store has it) and refuses a state from
    another configuration or snapshot with :class:`CheckpointMismatchError`.
    """

    def __init__(
        self,
        dataset: ShardedDataset | str | os.PathLike[str],
        *,
        batch_size: int,
        policy: Policy | str | None = None,
        store: SnapshotSource | None = None,
        num_epochs: int,
        seed: int = 0,
        world: World | None = None,
        num_workers: int = 0,
        shuffle_window: int = 4,
        shuffle_buffer: int = 1024,
        drop_last: bool = True,
        transform: Transform | None = None,
        fields: list[str] | tuple[str, ...] | None = None,
        decode: bool = True,
        max_gap: int | None = None,
        gap_budget: float | None = None,
        max_block: int = DEFAULT_MAX_BLOCK,
        io_concurrency: int | None = None,
        prefetch_batches: int = 2,
        pin_memory: bool | None = None,
        mixup: bool = True,
        storage_options: dict[str, Any] | None = None,
        multiprocessing_context: str = "forkserver",
    ) -> None:
        self.dataset = dataset if isinstance(dataset, ShardedDataset) else open_dataset(dataset, storage_options)
        self.world = World.detect() if world is None else world
        if not isinstance(self.world, World):
            raise ConfigError(f"world={world!r} must be a shardprune.dist.world.World or None")
        self.num_epochs = _check_int("num_epochs", num_epochs, 1)
        self.seed = _check_int("seed", seed, 0)
        self.cfg = PlanConfig(
            seed=self.seed,
            batch_size=batch_size,
            rank=self.world.rank,
            world_size=self.world.world_size,
            shuffle_window=shuffle_window,
            shuffle_buffer=shuffle_buffer,
            drop_last=bool(drop_last),
        )
        if policy is None:
            policy = "full"
        self.policy: Policy = make_policy(policy) if isinstance(policy, str) else policy
        if not callable(getattr(self.policy, "decide", None)):
            raise ConfigError(f"policy={policy!r} must be a Policy, a policy name or None")
        if store is not None and not callable(getattr(store, "snapshot", None)):
            raise ConfigError(f"store={store!r} has no snapshot() method; pass a ScoreStore or None")
        self.store = store
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.prefetch_batches = _check_int("prefetch_batches", prefetch_batches, 0)
        local = self.dataset.storage.is_local
        self.max_gap = _check_int("max_gap", LOCAL_MAX_GAP if local else REMOTE_MAX_GAP, 0) if max_gap is None else (
            _check_int("max_gap", max_gap, 0)
        )
        budget = (LOCAL_GAP_BUDGET if local else REMOTE_GAP_BUDGET) if gap_budget is None else gap_budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget <= 10:
            raise ConfigError(f"gap_budget={gap_budget!r} must be a number in [0, 10] (a fraction of the planned bytes)")
        self.gap_budget = float(budget)
        self.max_block = _check_int("max_block", max_block, 1)
        io = (LOCAL_IO_CONCURRENCY if local else REMOTE_IO_CONCURRENCY) if io_concurrency is None else io_concurrency
        self.io_concurrency = _check_int("io_concurrency", io, 1)
        if multiprocessing_context not in MP_CONTEXTS:
            raise ConfigError(
                f"multiprocessing_context={multiprocessing_context!r} is not one of {MP_CONTEXTS}; fork is "
                "refused because the parent's threads and object-store clients do not survive it"
            )
        self.multiprocessing_context = multiprocessing_context
        if self.num_workers > 0 and multiprocessing_context == "forkserver":
            _preload_forkserver(FORKSERVER_PRELOAD + (() if local else FORKSERVER_PRELOAD_REMOTE))
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        if self.pin_memory and not torch.cuda.is_available():
            raise ConfigError(
                "pin_memory=True needs CUDA, and torch.cuda.is_available() is False here; "
                "pass pin_memory=None (pin when CUDA is available) or False"
            )
        self.mixup = bool(mixup)
        self.fetcher = UnitFetcher(
            self.dataset,
            decode=decode,
            transform=transform,
            io_threads=self.io_concurrency,
            fields=None if fields is None else tuple(fields),
            pack=self.num_workers > 0,
        )
        m = self.dataset.manifest
        self._lengths = np.asarray(m.length, dtype=np.int64)
        self.snapshot: ScoreSnapshot | None = None
        self.decision: EpochDecision | None = None
        self.plan: EpochPlan | None = None
        self.epoch_stats = EpochStats()
        self._start = 0
        self._yielded = 0
        self._resume_pending = False
        self._active: list[BaseNode[Any]] = []

    # -- configuration and planning -------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What an epoch plan depends on besides the epoch and the snapshot (JSON-able)."""
        state = self.policy.state_dict() if callable(getattr(self.policy, "state_dict", None)) else {}
        return {
            "dataset": self.dataset.fingerprint,
            "num_samples": len(self.dataset),
            "num_epochs": self.num_epochs,
            "seed": self.seed,
            "batch_size": self.cfg.batch_size,
            "rank": self.cfg.rank,
            "world_size": self.cfg.world_size,
            "shuffle_window": self.cfg.shuffle_window,
            "shuffle_buffer": self.cfg.shuffle_buffer,
            "drop_last": self.cfg.drop_last,
            "policy": json.loads(json.dumps(state, sort_keys=True, default=repr)),
            "mixup": self.mixup,
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

    def _plan_epoch(self, epoch: int, snapshot: ScoreSnapshot) -> None:
        decision = self.policy.decide(snapshot, epoch, self.seed, self.num_epochs)
        n = len(self.dataset)
        if decision.keep.shape != (n,) or decision.weights.shape != (n,):
            raise ConfigError(
                f"policy {self.policy!r} returned keep/weights of shapes {decision.keep.shape}/"
                f"{decision.weights.shape}; the dataset has {n} samples"
            )
        m = self.dataset.manifest
        plan = make_plan(
            decision.keep, decision.weights, m.shard, m.offset, len(self.dataset.header.shards), self.cfg, epoch
        )
        self.shutdown()
        self.snapshot, self.decision, self.plan = snapshot, decision, plan
        keep = np.asarray(decision.keep, dtype=bool)
        self.epoch_stats = EpochStats(
            epoch=epoch,
            samples_total=n,
            samples_planned=plan.num_samples,
            samples_skipped=n - int(np.count_nonzero(keep)),
            trimmed=plan.trimmed,
            padded=plan.padded,
            bytes_kept=int(self._lengths[plan.slot_ids[plan.order]].sum()),
            bytes_not_read=int(self._lengths[~keep].sum()),
        )
        self._start = self._yielded = 0

    def set_epoch(self, epoch: int) -> None:
        """Freeze the scores, decide what to keep and plan ``epoch`` (0 <= epoch < num_epochs).

        Right after :meth:`load_state_dict`, ``set_epoch`` of the checkpoint's epoch keeps
        the resume point (the usual ``for epoch in range(start, E): set_epoch(epoch)`` loop
        then continues the epoch instead of replaying it); any other epoch plans afresh.
        """
        epoch = _check_int("epoch", epoch, 0)
        if epoch >= self.num_epochs:
            raise ConfigError(f"epoch={epoch} is outside 0..{self.num_epochs - 1} (num_epochs={self.num_epochs})")
        resumed, self._resume_pending = self._resume_pending, False
        if resumed and self.plan is not None and self.plan.epoch == epoch:
            return
        self._plan_epoch(epoch, self._freeze())

    def _current(self) -> EpochPlan:
        if self.plan is None:
            self.set_epoch(0)
        assert self.plan is not None
        return self.plan

    def __len__(self) -> int:
        """Batches of the current epoch (plans epoch 0 if no epoch was set)."""
        return self._current().num_batches

    def read_units(self, start_batch: int = 0) -> ReadPlan:
        """The range reads serving batches ``start_batch..`` of the current epoch, in read order."""
        plan = self._current()
        slots = np.sort(plan.order[start_batch * plan.batch_size :])
        m = self.dataset.manifest
        return plan_reads(
            slots,
            plan.slot_ids[slots],
            m.shard,
            m.offset,
            m.length,
            max_gap=self.max_gap,
            max_block=self.max_block,
            gap_budget=self.gap_budget,
            cost=self.dataset.storage.cost,
        )

    # -- iteration ----------------------------------------------------------------------
    def _count(self, result: UnitResult) -> None:
        s = self.epoch_stats
        s.bytes_read += result.bytes_read
        s.requests += result.requests
        s.gap_bytes += result.gap_bytes

    def _pipeline(self, plan: EpochPlan, start: int) -> tuple[BaseNode[Batch], list[BaseNode[Any]]]:
        units: BaseNode[ReadUnit] = IterableWrapper(self.read_units(start))
        fetched: BaseNode[UnitResult]
        if self.num_workers == 0:
            fetched = Mapper(units, self.fetcher)
        else:
            fetched = ParallelMapper(
                units,
                self.fetcher,
                num_workers=self.num_workers,
                in_order=True,
                method="process",
                multiprocessing_context=self.multiprocessing_context,
            )
        ordered = PlanOrder(fetched, plan, start_batch=start, on_result=self._count)
        decision = self.decision
        assert decision is not None
        header = self.dataset.header
        assembler = BatchAssembler(
            plan,
            seed=self.seed,
            mixup_prob=float(decision.mixup_prob) if self.mixup else 0.0,
            mixup_alpha=float(decision.mixup_alpha),
            num_classes=header.num_classes,
            keep_label=header.num_classes is not None,
        )
        root: BaseNode[Batch] = Mapper(ordered, assembler)
        nodes: list[BaseNode[Any]] = [root, ordered, fetched]
        if self.pin_memory:
            root = PinMemory(root)
            nodes.insert(0, root)
        if self.prefetch_batches > 0:
            root = Prefetcher(root, prefetch_factor=self.prefetch_batches)
            nodes.insert(0, root)
        return root, nodes

    def __iter__(self) -> Iterator[Batch]:
        plan = self._current()
        start = self._start
        self._start = 0  # iterating again replays the epoch from its start
        self._resume_pending = False
        self.shutdown()
        root, nodes = self._pipeline(plan, start)
        self._active = nodes
        self._yielded = start
        stats = self.epoch_stats
        # The I/O counters describe this pass only: a replayed or resumed epoch starts at zero.
        stats.bytes_read = stats.gap_bytes = stats.requests = 0
        stats.batches = start
        watch = _WorkerWatch(nodes[-1]) if self.num_workers else None
        try:
            for batch in root:
                self._yielded += 1
                self.epoch_stats.batches = self._yielded
                yield batch
        except Exception as exc:
            if watch is not None and watch.dead is not None:
                pid, code = watch.dead
                raise FetchError(
                    f"loader worker process {pid} died (exit code {code}: killed, e.g. out of memory) during "
                    f"epoch {plan.epoch}; iterate again to restart the epoch's workers, or resume from a checkpoint"
                ) from exc
            raise
        finally:
            if watch is not None:
                watch.stop()
            for node in nodes:
                _stop(node)
            if self._active is nodes:
                self._active = []

    def shutdown(self) -> None:
        """Stop the running pipeline's threads and worker processes (if any)."""
        nodes, self._active = self._active, []
        for node in nodes:
            _stop(node)

    def close(self) -> None:
        """Stop the pipeline and close this process's file handles."""
        self.shutdown()
        self.dataset.storage.close()

    def __enter__(self) -> "StreamingLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The resume point: the epoch and the batches handed out so far (see the class doc)."""
        plan = self._current()
        assert self.snapshot is not None
        config = self.config()
        return {
            "version": STATE_VERSION,
            "config": config,
            "config_fingerprint": _digest(config),
            "epoch": plan.epoch,
            "batches_yielded": self._yielded,
            "snapshot_fingerprint": self.snapshot.fingerprint,
            "plan_fingerprint": plan.fingerprint(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a :meth:`state_dict`: the next iteration yields the remaining batches.

        Raises:
            CheckpointMismatchError: the state comes from another configuration, dataset,
                policy or score snapshot (the message shows checkpoint and current values).
        """
        if not isinstance(state, dict) or set(state) != STATE_KEYS:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise CheckpointMismatchError(f"loader state keys {keys} (in checkpoint), expected {sorted(STATE_KEYS)}")
        if state["version"] != STATE_VERSION:
            raise CheckpointMismatchError(
                f"loader state version {state['version']} (in checkpoint) vs {STATE_VERSION} (now)"
            )
        now = self.config()
        saved = state["config"]
        diffs = [
            f"{k}: {saved.get(k)!r} (in checkpoint) vs {now.get(k)!r} (now)"
            for k in sorted(set(now) | set(saved))
            if saved.get(k) != now.get(k)
        ]
        if diffs:
            raise CheckpointMismatchError(
                "the loader checkpoint was made under another configuration: " + "; ".join(diffs)
            )
        epoch = _check_int("epoch", state["epoch"], 0)
        if epoch >= self.num_epochs:
            raise CheckpointMismatchError(f"epoch {epoch} (in checkpoint) is outside 0..{self.num_epochs - 1} (now)")
        snapshot = self._snapshot_for(str(state["snapshot_fingerprint"]))
        self._plan_epoch(epoch, snapshot)
        assert self.plan is not None
        if self.plan.fingerprint() != state["plan_fingerprint"]:
            raise CheckpointMismatchError(
                f"epoch {epoch} plan {state['plan_fingerprint']} (in checkpoint) vs {self.plan.fingerprint()} (now) "
                "from the same scores and configuration; the policy or planner code changed"
            )
        cursor = state["batches_yielded"]
        if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor <= self.plan.num_batches:
            raise CheckpointMismatchError(
                f"batches_yielded={cursor!r} (in checkpoint) is outside 0..{self.plan.num_batches} (now)"
            )
        self._start = self._yielded = cursor
        self.epoch_stats.batches = cursor
        self._resume_pending = True

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


def _preload_forkserver(modules: tuple[str, ...]) -> None:
    """Add ``modules`` to the forkserver's preload list (the user's entries are kept).

    Takes effect only if the process's forkserver has not started yet; otherwise the
    workers still work, they just import what they need themselves. The forkserver
    skips a module that fails to import.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    current = list(getattr(server, "_preload_modules", ["__main__"]))
    missing = [m for m in modules if m not in current]
    if missing:
        forkserver.set_forkserver_preload(current + missing)


class _WorkerWatch:
    """Notice a fetch worker process that died, and end the epoch instead of hanging.

    ``torchdata``'s ``ParallelMapper`` waits forever for the result of a worker that was
    killed (SIGKILL, the OOM killer). This thread polls the worker processes every
    ``interval_s``; when one has exited with a non-zero code it records ``dead = (pid,
    exit code)`` and stops the mapper, whose iteration then ends early, and the loader
    raises :class:`FetchError` naming the process.
    """

    def __init__(self, mapper: BaseNode[Any], interval_s: float = 0.5) -> None:
        self.mapper = mapper
        self.interval_s = interval_s
        self.dead: tuple[int, int] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shardprune-worker-watch", daemon=True)
        self._thread.start()

    def _mapper_iter(self) -> Any:
        it = getattr(self.mapper, "_it", None)
        for _ in range(4):
            if it is None or hasattr(it, "_workers"):
                return it
            it = getattr(it, "_it", None)
        return None

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            it = self._mapper_iter()
            for worker in list(getattr(it, "_workers", ())):
                code = getattr(worker, "exitcode", None)
                if code:
                    self.dead = (int(worker.pid), int(code))
                    for event in ("_stop", "_mp_stop"):
                        flag = getattr(it, event, None)
                        if flag is not None:
                            flag.set()
                    return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(doc, sort_keys=True).encode(), digest_size=16).hexdigest()


def _stop(node: Any) -> None:
    """Shut down the threads/processes behind a torchdata node (they live in ``_it``)."""
    it = getattr(node, "_it", None)
    depth = 0
    while it is not None and depth < 4:
        shutdown = getattr(it, "_shutdown", None)
        if callable(shutdown):
            shutdown()
            return
        it = getattr(it, "_it", None)
        depth += 1
