"""The worker lifecycle: the torchdata graph that reads one epoch, and its shutdown.

This is the one module of the loader that touches torchdata, and the only one that
reaches into its internals (``_it``, ``_workers``, ``_shutdown``: torchdata has no public
API to stop a running graph or to see its worker processes). The graph::

    IterableWrapper(read units)                       # read order, from the resume cursor
      -> Mapper / ParallelMapper(UnitFetcher)        # read + CRC + decode + transform
      -> PlanOrder                                   # back to plan order, cut into batches
      -> Mapper(BatchAssembler)                      # collate, weights, epoch, Mixup
      -> Failsafe                                    # an exception becomes a Failure item
      -> PinMemory (CUDA) -> Prefetcher(prefetch_batches)

With ``num_workers=0`` the fetch runs in the training process; otherwise in worker
processes started with ``multiprocessing_context`` (forkserver by default), which receive
the pickled :class:`UnitFetcher` (dataset URL and manifest arrays, options, the caller's
``AWS_*`` / ``FSSPEC_*`` variables), never a score store or an fsspec client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from torchdata.nodes import BaseNode, IterableWrapper, Mapper, ParallelMapper, PinMemory, Prefetcher

from shardprune.errors import FetchError
from shardprune.loader.collate import Batch
from shardprune.loader.failure import Failure
from shardprune.loader.fetch import UnitFetcher, UnitResult
from shardprune.loader.ioplan import ReadUnit
from shardprune.loader.order import BatchAssembler, PlanOrder
from shardprune.loader.plan import EpochPlan

#: Modules the forkserver imports once before it forks any worker, so that each worker
#: starts with torch and the fetch code loaded instead of importing them itself (seconds
#: per worker and per epoch on a busy machine).
FORKSERVER_PRELOAD = ("numpy", "torch", "shardprune.loader.fetch")
#: Added for remote datasets: the object-store client stack (a missing one is skipped).
FORKSERVER_PRELOAD_REMOTE = ("fsspec", "s3fs", "aiobotocore.session")


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
        num_workers: Worker processes (0: fetch in this process).
        multiprocessing_context: ``"forkserver"`` or ``"spawn"``.
        pin_memory: Pin batches for CUDA.
        prefetch_batches: Batches assembled ahead (0: none).
        on_result: Called with each unit result as it arrives (I/O counters).
    """

    def __init__(
        self,
        units: list[ReadUnit],
        plan: EpochPlan,
        start: int,
        *,
        fetcher: UnitFetcher,
        assembler: BatchAssembler,
        num_workers: int,
        multiprocessing_context: str,
        pin_memory: bool,
        prefetch_batches: int,
        on_result: Callable[[UnitResult], None],
    ) -> None:
        self.epoch = plan.epoch
        source: BaseNode[ReadUnit] = IterableWrapper(units)
        fetched: BaseNode[UnitResult]
        if num_workers == 0:
            fetched = Mapper(source, fetcher)
        else:
            fetched = ParallelMapper(
                source,
                fetcher,
                num_workers=num_workers,
                in_order=True,
                method="process",
                multiprocessing_context=multiprocessing_context,
            )
        ordered = PlanOrder(fetched, plan, start_batch=start, on_result=on_result)
        root: BaseNode[Any] = Failsafe(Mapper(ordered, assembler))
        nodes: list[BaseNode[Any]] = [root, ordered, fetched]
        if pin_memory:
            root = PinMemory(root)
            nodes.insert(0, root)
        if prefetch_batches > 0:
            root = Prefetcher(root, prefetch_factor=prefetch_batches)
            nodes.insert(0, root)
        self.root = root
        self._nodes = nodes
        self._watch = _WorkerWatch(fetched) if num_workers else None

    def batches(self) -> Any:
        """Iterate the batches; raises the first error of the pass where its batch was due."""
        try:
            for item in self.root:
                if isinstance(item, Failure):
                    raise item.exc
                batch: Batch = item
                yield batch
        except Exception as exc:
            dead = self._watch.dead if self._watch is not None else None
            if dead is not None:
                pid, code = dead
                raise FetchError(
                    f"loader worker process {pid} died (exit code {code}: killed, e.g. out of memory) during "
                    f"epoch {self.epoch}; set_epoch({self.epoch}) and iterate again to restart the epoch's "
                    "workers, or resume from a checkpoint"
                ) from exc
            raise

    def stop(self) -> None:
        """Stop the graph's threads and worker processes."""
        if self._watch is not None:
            self._watch.stop()
        for node in self._nodes:
            _stop(node)


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
