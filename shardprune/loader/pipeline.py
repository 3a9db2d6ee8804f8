"""The worker lifecycle: the torchdata graph that reads one epoch, and its shutdown.

This and :mod:`~shardprune.loader.workers` are the loader's only torchdata users, and this
module the only one that reaches into its internals (``_it``, ``_shutdown``: torchdata has
no public API to stop a running prefetch thread). The graph::

    read units                                       # read order, from the resume cursor
      -> ReadAhead(UnitFetcher) / PoolMapper(pool)   # read (next units' requests under way),
                                                     # CRC, decode, transform
      -> PlanOrder                                   # back to plan order, cut into batches
      -> Mapper(BatchAssembler)                      # collate, weights, epoch, Mixup
      -> Failsafe                                    # an exception becomes a Failure item
      -> PinMemory (CUDA) -> Prefetcher(prefetch_batches)

With ``num_workers=0`` the fetch runs in the training process; otherwise in the loader's
persistent :class:`~shardprune.loader.workers.WorkerPool`, whose processes (started with
``multiprocessing_context``, forkserver by default) received the pickled
:class:`UnitFetcher` (dataset URL and manifest arrays, options, the caller's ``AWS_*`` /
``FSSPEC_*`` variables) once, never a score store or an fsspec client.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from torchdata.nodes import BaseNode, Mapper, PinMemory, Prefetcher

from shardprune.loader.collate import Batch
from shardprune.loader.failure import Failure
from shardprune.loader.fetch import READ_AHEAD_UNITS, Reads, UnitFetcher, UnitResult
from shardprune.loader.ioplan import ReadUnit
from shardprune.loader.order import BatchAssembler, PlanOrder
from shardprune.loader.plan import EpochPlan
from shardprune.loader.workers import PoolMapper, WorkerPool

#: Modules the forkserver imports once before it forks any worker, so that each worker
#: starts with torch and the fetch code loaded instead of importing them itself (seconds
#: per worker and per epoch on a busy machine).
FORKSERVER_PRELOAD = ("numpy", "torch", "shardprune.loader.fetch")
#: Added for remote datasets: the object-store client stack (a missing one is skipped).
FORKSERVER_PRELOAD_REMOTE = ("fsspec", "s3fs", "aiobotocore.session")
#: Seconds :meth:`EpochPipeline.stop` waits for the graph's threads to finish the item in hand
#: when asked to join them (at :meth:`StreamingLoader.close` and at interpreter exit).
JOIN_S = 30.0
#: Pipelines whose threads may still run: stopped and joined at interpreter exit (see
#: :func:`_stop_running`).
_RUNNING: weakref.WeakSet[EpochPipeline] = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()  # a background stop may discard while exit iterates


class ReadAhead(BaseNode[UnitResult]):
    """torchdata node: the results of ``units`` in order, fetched in this process with the
    requests of the next ``depth - 1`` units already under way (:meth:`UnitFetcher.start`).

    Args:
        units: The pass's read units in read order.
        fetcher: Reads them.
        depth: Units whose reads are started at once (>= 1; 1: one unit at a time).
    """

    def __init__(self, units: Sequence[ReadUnit], fetcher: UnitFetcher, depth: int = 1 + READ_AHEAD_UNITS) -> None:
        super().__init__()
        self.units, self.fetcher, self.depth = units, fetcher, depth
        self._next = self._received = 0
        self._started: deque[tuple[ReadUnit, Reads]] = deque()

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._next = self._received = 0
        self._started.clear()

    def get_state(self) -> dict[str, Any]:
        return {"received": self._received}

    def cancel(self) -> None:
        """Drop the units read ahead (those not started are never read)."""
        while self._started:
            self._started.popleft()[1].cancel()
        self._next = len(self.units)

    def next(self) -> UnitResult:
        while len(self._started) < self.depth and self._next < len(self.units):
            unit = self.units[self._next]
            self._started.append((unit, self.fetcher.start(unit)))
            self._next += 1
        if not self._started:
            raise StopIteration
        unit, reads = self._started.popleft()
        self._received += 1
        return self.fetcher.finish(unit, reads)


class Failsafe(BaseNode[Any]):
    """Pass items through; an exception from upstream becomes one :class:`Failure` item, then the end.

    The prefetch thread above it would otherwise re-raise the exception wrapped in a
    new one carrying the thread's traceback in its message.
    """

    def __init__(self, source: BaseNode[Any]) -> None:
        super().__init__()
        self.source = source
        self._failed = False

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.source.reset()
        self._failed = False

    def get_state(self) -> dict[str, Any]:
        return {}

    def next(self) -> Any:
        if self._failed:
            raise StopIteration
        try:
            return next(self.source)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the loader as an item, raised there
            self._failed = True
            return Failure(exc)


class EpochPipeline:
    """One pass over an epoch's read units: the running graph, its worker watch, its shutdown.

    Args:
        units: The read units serving batches ``start..`` in read order.
        plan: The epoch plan.
        start: First batch to yield.
        fetcher: Reads one unit.
        assembler: Collates one batch.
        pool: The loader's worker pool, or None to fetch in this process.
        pin_memory: Pin batches for CUDA.
        prefetch_batches: Batches assembled ahead (0: none).
        on_result: Called with each unit result as it arrives (I/O counters).
    """

    def __init__(
        self,
        units: Sequence[ReadUnit],
        plan: EpochPlan,
        start: int,
        *,
        fetcher: UnitFetcher,
        assembler: BatchAssembler,
        pool: WorkerPool | None,
        pin_memory: bool,
        prefetch_batches: int,
        on_result: Callable[[UnitResult], None],
    ) -> None:
        self.epoch = plan.epoch
        fetched: BaseNode[UnitResult]
        fetched = ReadAhead(units, fetcher) if pool is None else PoolMapper(units, pool, plan.epoch)
        ordered = PlanOrder(fetched, plan, start_batch=start, on_result=on_result)
        root: BaseNode[Any] = Failsafe(Mapper(ordered, assembler))
        nodes: list[BaseNode[Any]] = [root, ordered, fetched]  # stopped in this order
        if pin_memory:
            root = PinMemory(root)
            nodes.insert(0, root)
        if prefetch_batches > 0:
            root = Prefetcher(root, prefetch_factor=prefetch_batches)
            nodes.insert(0, root)
        self.root = root
        self._nodes = nodes
        with _RUNNING_LOCK:
            _RUNNING.add(self)

    def batches(self) -> Any:
        """Iterate the batches; raises the first error of the pass where its batch was due."""
        for item in self.root:
            if isinstance(item, Failure):
                raise item.exc
            batch: Batch = item
            yield batch

    def stop(self, join_s: float = 0.0) -> None:
        """Stop the graph's threads (the pool's processes stay for the next pass).

        Args:
            join_s: Seconds to wait, in all, for threads still finishing an item (a
                transform, a collate) to end; 0: do not wait beyond torchdata's own joins.
        """
        for node in self._nodes:
            _stop(node)
            if isinstance(node, ReadAhead):
                node.cancel()
        threads = [t for node in self._nodes for t in _threads(node) if t is not threading.current_thread()]
        deadline = time.monotonic() + join_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if not any(t.is_alive() for t in threads):
            with _RUNNING_LOCK:
                _RUNNING.discard(self)


def preload_forkserver(modules: tuple[str, ...]) -> None:
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


def _threads(node: Any) -> list[threading.Thread]:
    """The threads behind a torchdata node (in its iterator ``_it``, or one level below)."""
    found: list[threading.Thread] = []
    it = getattr(node, "_it", None)
    depth = 0
    while it is not None and depth < 4:
        for name in ("_thread", "_read_thread", "_sort_thread"):
            thread = getattr(it, name, None)
            if isinstance(thread, threading.Thread):
                found.append(thread)
        found.extend(t for t in getattr(it, "_workers", ()) if isinstance(t, threading.Thread))
        it = getattr(it, "_it", None)
        depth += 1
    return found


@atexit.register
def _stop_running() -> None:
    """At interpreter exit, stop every pipeline still running and wait for its threads.

    A script that ends (or fails) while a loader's iterator is alive mid-epoch leaves the
    graph's daemon threads preparing batches. One that is inside a torch operator when the
    interpreter finalises is killed as it takes the GIL back, through a C++ ``noexcept``
    frame, and the whole process aborts ("terminate called without an active exception",
    status 134) instead of exiting with its own status. ``atexit`` runs before that, with
    the interpreter whole: the threads are told to stop and finish the item in hand.
    Registered at import, after torch's and multiprocessing's handlers, so it runs first
    (the worker processes still answer while the graph stops).
    """
    deadline = time.monotonic() + JOIN_S
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for pipeline in running:
        pipeline.stop(join_s=max(0.1, deadline - time.monotonic()))


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
