"""The report queue: ``update`` returns at once; one background thread applies reports in order.

The thread holds no reference to the store (only to the ``apply`` callable it was given),
so a store that its user drops can be garbage-collected and warn (see
:mod:`shardprune.scores.binding`). An error raised while applying is kept and raised
in the caller's thread at its next call (:meth:`ReportQueue.raise_pending`).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

from shardprune.scores.transfer import HostArray

#: Reports taken off the queue per application: bounds one fold's memory.
MAX_DRAIN = 256
_STOP = object()
Item = tuple[HostArray, HostArray, int]


class ReportQueue:
    """A FIFO of ``(ids, losses, epoch)`` items and the thread that applies them.

    Args:
        apply: Called on the background thread with up to ``MAX_DRAIN`` items, in
            queue order. An exception it raises is deferred to the caller.
    """

    def __init__(self, apply: Callable[[list[Item]], None]) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ticket = itertools.count(1)
        self._submitted = 0
        self._applied = 0
        self._done = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=_work, args=(self, apply), name="shardprune-scores", daemon=True)
        self._thread.start()

    def put(self, item: Item) -> None:
        with self._done:
            self._submitted = next(self._ticket)
            self._queue.put(item)

    @property
    def pending(self) -> int:
        """Items queued and not yet applied."""
        with self._done:
            return self._submitted - self._applied

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until every item queued before the call is applied (or ``stop`` is set)."""
        with self._done:
            target = self._submitted
            while self._applied < target and not (stop is not None and stop.is_set()):
                self._done.wait(timeout=None if stop is None else 1.0)

    def raise_pending(self) -> None:
        """Raise (once) the first error the thread met since the last call."""
        err, self._error = self._error, None
        if err is not None:
            raise err

    def stop(self) -> None:
        """Apply what is queued, then end the thread (idempotent)."""
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _finish(self, count: int, error: BaseException | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        with self._done:
            self._applied += count
            self._done.notify_all()

    def _take(self) -> tuple[list[Item], bool]:
        items: list[Any] = [self._queue.get()]
        while len(items) < MAX_DRAIN:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [it for it in items if it is not _STOP], any(it is _STOP for it in items)


def _work(q: ReportQueue, apply: Callable[[list[Item]], None]) -> None:
    while True:
        batch, stop = q._take()
        error: BaseException | None = None
        try:
            apply(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            error = exc
        q._finish(len(batch), error)
        if stop:
            return
