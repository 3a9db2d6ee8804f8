"""Persistent fetch workers: processes that start once and serve every epoch of a loader.

A :class:`WorkerPool` starts ``num_workers`` processes the first time a pass needs them and
keeps them until :meth:`WorkerPool.close` (the loader's ``close()``, or garbage collection).
Each worker receives the :class:`~shardprune.loader.fetch.UnitFetcher` (the dataset's URL,
manifest arrays and options) once, when it starts; afterwards only read units travel to it.

Hand-off, in rules:

1. Unit ``i`` of a pass goes to worker ``i % num_workers``, on that worker's own input
   queue; its result comes back on that worker's own output queue. Each queue is FIFO, so
   the pool returns results in unit order without a reorder buffer, and the batches do not
   depend on the worker count (the plan order is restored later by slot).
2. At most ``in_flight`` units per worker are outstanding, which bounds memory.
3. Results cross as one shared-memory tensor per unit (:meth:`UnitResult.pack`).
4. Every pass has a generation number. A pass that is abandoned (``break``, an error)
   leaves units in the queues: workers skip units older than the live generation (a
   shared counter) without reading them, and the next pass drops their results. The
   next epoch's pass may be opened early (:meth:`WorkerPool.open_early`, once it is
   planned): its first units are queued as soon as the current pass has queued its
   last, so the workers read on across the epoch boundary; the results that arrive
   before their pass starts are kept for it.
5. While waiting for a result, the pool polls its processes; a worker that died (SIGKILL,
   the OOM killer) raises :class:`~shardprune.errors.FetchError` naming its PID and exit
   code, and the next pass starts a new process in its place.
6. An exception while reading a unit is returned in the result and re-raised, unchanged,
   in the training process (:mod:`shardprune.loader.failure`).
"""

from __future__ import annotations

import queue
import signal
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.multiprocessing as mp
from torchdata.nodes import BaseNode

from shardprune.errors import FetchError
from shardprune.loader.fetch import READ_AHEAD_UNITS, Reads, UnitFetcher, UnitResult
from shardprune.loader.ioplan import ReadUnit

#: How often a waiting pass checks that its workers are alive (seconds).
POLL_S = 0.2
#: Seconds a worker gets to exit after the stop message before it is terminated.
JOIN_S = 5.0


def _serve(fetcher: UnitFetcher, inq: Any, outq: Any, live_from: Any) -> None:
    """A worker's loop: read the units it is sent until the stop message (None).

    Every unit already queued has its requests started (:meth:`UnitFetcher.start`) before
    the oldest is cut, decoded and sent back, so a worker's next round trips overlap its
    CPU work; results still leave in the order the units came.
    """
    # Ctrl-C goes to the whole process group; the training process handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started: deque[tuple[int, int, ReadUnit | None, Reads | None]] = deque()
    stopping = False
    while True:
        while not stopping:
            try:
                item = inq.get_nowait() if started else inq.get()
            except queue.Empty:
                break
            if item is None:
                stopping = True
                break
            gen, index, unit = item
            if gen < live_from.value:
                started.append((gen, index, None, None))  # an abandoned pass's unit: not read
            else:
                started.append((gen, index, unit, fetcher.start(unit)))
        if not started:
            return
        gen, index, unit, reads = started.popleft()
        if unit is None or reads is None or gen < live_from.value:
            outq.put((gen, index, None))
        else:
            outq.put((gen, index, fetcher.finish(unit, reads)))


@dataclass
class _Early:
    """A pass opened before its predecessor ended (rule 4): its generation and first units."""

    gen: int
    units: Sequence[ReadUnit]
    sent: int
    restarts: int


class WorkerPool:
    """Long-lived fetch processes, each with its own input and output queue.

    Args:
        fetcher: Reads one unit; sent to each worker once, when it starts (``pack=True``).
        num_workers: Processes (>= 1).
        context: ``"forkserver"`` or ``"spawn"``.
        in_flight: Units outstanding per worker (>= 1; default: the one being decoded, the
            :data:`~shardprune.loader.fetch.READ_AHEAD_UNITS` being read, and one queued
            behind them so the read-ahead never waits for the training process to send it).
    """

    def __init__(
        self, fetcher: UnitFetcher, num_workers: int, context: str, in_flight: int = 2 + READ_AHEAD_UNITS
    ) -> None:
        self.fetcher = fetcher
        self.num_workers = num_workers
        self.in_flight = in_flight
        self._ctx: Any = mp.get_context(context)
        self._live_from = self._ctx.Value("q", 0)  # units of older generations are skipped
        self._counter = 0
        self._procs: list[Any] = [None] * num_workers
        self._inqs: list[Any] = [None] * num_workers
        self._outqs: list[Any] = [None] * num_workers
        self._stash: dict[tuple[int, int], UnitResult] = {}
        self._early: _Early | None = None
        self._dispatching = False
        self._lock = threading.Lock()
        self.started = 0  # processes started over the pool's life (tests check reuse)
        self.adopted = 0  # passes that were opened early and then served

    def _start(self, w: int) -> None:
        inq, outq = self._ctx.Queue(), self._ctx.Queue()
        proc = self._ctx.Process(
            target=_serve, args=(self.fetcher, inq, outq, self._live_from), name=f"shardprune-fetch-{w}", daemon=True
        )
        proc.start()
        self._procs[w], self._inqs[w], self._outqs[w] = proc, inq, outq
        self.started += 1

    def _window(self) -> int:
        return self.in_flight * self.num_workers

    def open(self, units: Sequence[ReadUnit]) -> tuple[int, int]:
        """Start a pass over ``units``: ``(generation, units already sent)``.

        Starts (or replaces dead) workers. Adopts the early-opened pass if it is over these
        same units and no worker was replaced since; otherwise opens a new generation and
        cancels every older one (rule 4 of the module doc).
        """
        with self._lock:
            restarts = self.started
            for w, proc in enumerate(self._procs):
                if proc is None or not proc.is_alive():
                    if proc is not None:
                        self._discard(w)
                    self._start(w)
            early, self._early = self._early, None
            if early is not None and early.units is units and early.restarts == restarts and self.started == restarts:
                gen, sent = early.gen, early.sent
                self.adopted += 1
            else:
                self._counter += 1
                gen, sent = self._counter, 0
            self._live_from.value = gen
            self._stash = {k: v for k, v in self._stash.items() if k[0] >= gen}
            self._dispatching = sent < len(units)
            return gen, sent

    def open_early(self, units: Sequence[ReadUnit]) -> None:
        """Open the next pass now; its first units are sent once the current pass has sent all of its own."""
        with self._lock:
            if any(p is None for p in self._procs):
                return
            self._counter += 1
            self._early = _Early(self._counter, units, 0, self.started)
            if not self._dispatching:
                self._send_early()

    def _send_early(self) -> None:
        early = self._early
        if early is None or early.sent:
            return
        for index in range(min(len(early.units), self._window())):
            self.send(early.gen, index, early.units[index])
        early.sent = min(len(early.units), self._window())

    def dispatched(self) -> None:
        """The current pass has sent its last unit: the early pass may follow."""
        with self._lock:
            self._dispatching = False
            self._send_early()

    def pids(self) -> list[int | None]:
        """The worker processes' PIDs (None for one not started)."""
        return [p.pid if p is not None else None for p in self._procs]

    def send(self, gen: int, index: int, unit: ReadUnit) -> None:
        w = index % self.num_workers
        self._inqs[w].put((gen, index, unit))

    def receive(self, gen: int, index: int, epoch: int) -> UnitResult:
        """The result of unit ``index`` of pass ``gen`` of ``epoch``.

        Results of older passes are dropped; those of an early-opened pass are kept for it.
        """
        w = index % self.num_workers
        outq, proc = self._outqs[w], self._procs[w]
        while True:
            # Another thread (an abandoned pass still stopping) may have stashed it for us.
            stashed = self._stash.pop((gen, index), None)
            if stashed is not None:
                return stashed
            if gen < self._live_from.value:
                raise FetchError(f"pass {gen} of the worker pool was cancelled (a newer pass started)")
            try:
                got_gen, got_index, result = outq.get(timeout=POLL_S)
            except queue.Empty:
                if not proc.is_alive():
                    raise FetchError(
                        f"loader worker process {proc.pid} died ({_exit_reason(proc.exitcode)}) during epoch "
                        f"{epoch}; set_epoch({epoch}) and iterate again to read the epoch with a new worker, or "
                        "resume from a checkpoint"
                    ) from None
                continue
            if got_gen > gen and result is not None:
                self._stash[(got_gen, got_index)] = result
            elif got_gen == gen:
                if got_index != index or result is None:
                    raise FetchError(f"loader worker {w} returned unit {got_index} of pass {gen}, expected {index}")
                return result

    def _discard(self, w: int) -> None:
        for q in (self._inqs[w], self._outqs[w]):
            q.cancel_join_thread()
            q.close()
        self._procs[w] = self._inqs[w] = self._outqs[w] = None

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        with self._lock:
            self._counter += 1
            self._live_from.value = self._counter  # workers skip whatever is still queued
            self._early, self._stash = None, {}
        for w, proc in enumerate(self._procs):
            if proc is not None and proc.is_alive():
                try:
                    self._inqs[w].put(None)
                except (OSError, ValueError):
                    pass
        for w, proc in enumerate(self._procs):
            if proc is None:
                continue
            proc.join(JOIN_S)
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_S)
            self._discard(w)


class PoolMapper(BaseNode[UnitResult]):
    """torchdata node: the results of ``units``, in unit order, read by a :class:`WorkerPool`.

    Args:
        units: The pass's read units in read order.
        pool: The loader's pool.
        epoch: The epoch read (for messages).
    """

    def __init__(self, units: Sequence[ReadUnit], pool: WorkerPool, epoch: int) -> None:
        super().__init__()
        self.units = units
        self.pool = pool
        self.epoch = epoch
        self._gen = 0
        self._sent = self._received = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._gen, self._sent = self.pool.open(self.units)
        self._received = 0
        if self._sent >= len(self.units):
            self.pool.dispatched()

    def get_state(self) -> dict[str, Any]:
        return {"received": self._received}

    def next(self) -> UnitResult:
        if self._received >= len(self.units):
            raise StopIteration
        total = len(self.units)
        limit = min(total, self._received + self.pool.in_flight * self.pool.num_workers)
        if self._sent < limit:
            while self._sent < limit:
                self.pool.send(self._gen, self._sent, self.units[self._sent])
                self._sent += 1
            if self._sent == total:
                self.pool.dispatched()
        result = self.pool.receive(self._gen, self._received, self.epoch)
        self._received += 1
        return result


def _exit_reason(code: int | None) -> str:
    """What a dead worker's exit code says, for the error message."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ", e.g. by the out-of-memory killer" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    if code == 0:
        return "exit code 0: it stopped without sending the unit it was given"
    return (
        f"exit code {code}: it raised before serving, and its traceback is on standard error above; under "
        "spawn or forkserver a script that starts the loader must do so under `if __name__ == \"__main__\":`"
    )
