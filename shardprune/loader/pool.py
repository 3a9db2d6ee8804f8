"""Fetch worker processes that live as long as the loader, not one epoch.

Starting worker processes costs a fixed time per epoch (0.17-0.19 s for 2 forkserver
workers on the benchmark machine, measured in ``benchmarks/RESULTS.md``), which a pruned
epoch pays in full while its reading shrinks. :class:`WorkerPool` starts the workers
once, on the first epoch, and hands each the :class:`~shardprune.loader.fetch.UnitFetcher`
once, at start-up (the dataset's manifest is not pickled per read unit).
:class:`PoolMapper` is the ``torchdata`` node that sends the read units to the pool,
with a bounded number in flight, and yields their results in read order.

Results come back through the pool's process queue; a packed
:class:`~shardprune.loader.fetch.UnitResult` crosses as a shared-memory tensor, which the
worker process (alive until :meth:`WorkerPool.close`) keeps valid until the training
process has mapped it.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch.multiprocessing as mp
from torchdata.nodes import BaseNode

from shardprune.errors import FetchError
from shardprune.loader.fetch import UnitFetcher, UnitResult
from shardprune.loader.ioplan import ReadUnit

#: This worker process's fetcher, installed by :func:`_install` when the process starts.
_FETCHER: UnitFetcher | None = None


def _install(fetcher: UnitFetcher) -> None:
    global _FETCHER
    _FETCHER = fetcher


def _fetch(unit: ReadUnit) -> UnitResult:
    assert _FETCHER is not None, "worker process started without a fetcher"
    return _FETCHER(unit)


class WorkerPool:
    """``num_workers`` fetch processes, started on first use and reused every epoch.

    Args:
        fetcher: What each worker runs on a read unit (pickled once per worker).
        num_workers: Processes (>= 1).
        context: ``"forkserver"`` or ``"spawn"``.
    """

    def __init__(self, fetcher: UnitFetcher, num_workers: int, context: str) -> None:
        self.fetcher = fetcher
        self.num_workers = num_workers
        self.context = context
        self._executor: ProcessPoolExecutor | None = None

    def submit(self, unit: ReadUnit) -> "Future[UnitResult]":
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.num_workers,
                mp_context=mp.get_context(self.context),
                initializer=_install,
                initargs=(self.fetcher,),
            )
        return self._executor.submit(_fetch, unit)

    def close(self) -> None:
        """Stop the worker processes (a later :meth:`submit` starts new ones)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def discard(self) -> None:
        """Forget a broken pool (a worker died) without waiting for it."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


class PoolMapper(BaseNode[UnitResult]):
    """torchdata node: read units -> their :class:`UnitResult`, fetched by a :class:`WorkerPool`.

    Args:
        source: Node yielding the epoch's read units in read order.
        pool: The loader's worker pool.
        in_flight: Read units submitted ahead of the one being consumed (>= 1).

    State format: ``{}``. The loader resumes by rebuilding the read units from its
    cursor, so this node never restores a position of its own.
    """

    def __init__(self, source: BaseNode[ReadUnit], pool: WorkerPool, in_flight: int) -> None:
        super().__init__()
        self.source = source
        self.pool = pool
        self.in_flight = max(1, in_flight)
        self._pending: deque[Future[UnitResult]] = deque()
        self._exhausted = False

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self.cancel()
        self.source.reset()
        self._exhausted = False

    def get_state(self) -> dict[str, Any]:
        return {}

    def next(self) -> UnitResult:
        while not self._exhausted and len(self._pending) < self.in_flight:
            try:
                unit = next(self.source)
            except StopIteration:
                self._exhausted = True
                break
            self._pending.append(self.pool.submit(unit))
        if not self._pending:
            raise StopIteration
        future = self._pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool as exc:
            self.cancel()
            self.pool.discard()
            raise FetchError(
                "a loader worker process died (killed, or out of memory) while reading; "
                "the next epoch starts new workers"
            ) from exc

    def cancel(self) -> None:
        """Drop the read units not yet consumed (an epoch stopped early)."""
        while self._pending:
            self._pending.popleft().cancel()
