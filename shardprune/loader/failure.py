"""Errors that cross from a worker (process or thread) to the training loop, unchanged.

torchdata re-raises a worker's exception as a new one whose message is the whole worker
traceback (about 40 lines) wrapped around the original message. shardprune instead
carries the failure as a value:

1. In a worker process, :meth:`UnitFetcher.__call__` catches the exception and returns
   it in its result as a :class:`WorkerFailure`: the original exception object (its
   type and message, e.g. a :class:`~shardprune.errors.CorruptSampleError` naming shard,
   id and offset) plus the worker's formatted traceback and PID. An exception that does
   not pickle is replaced by a :class:`~shardprune.errors.FetchError` with its text.
2. In the training process, :meth:`WorkerFailure.rebuild` returns that same exception
   with ``__cause__`` set to a :class:`WorkerTraceback` holding the worker's traceback,
   so the error reads as one line and the worker's stack is still printed above it.
3. Between pipeline threads, :class:`Failure` carries an exception as an item, so the
   prefetch thread never wraps it either; the loader raises it where the batch was due.
"""

from __future__ import annotations

import os
import pickle
import traceback
from dataclasses import dataclass

from shardprune.errors import FetchError


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a loader worker process (the ``__cause__``)."""


@dataclass
class WorkerFailure:
    """An exception raised in a worker process, ready to cross a process queue.

    Attributes:
        exc: The original exception (picklable), or a FetchError standing in for it.
        traceback: The worker's formatted traceback.
        pid: The worker process.
    """

    exc: BaseException
    traceback: str
    pid: int

    @classmethod
    def capture(cls, exc: BaseException) -> WorkerFailure:
        """Wrap ``exc`` (being handled in this worker) for the trip to the training process."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        carried: BaseException = exc
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - any exception that cannot travel is described instead
            carried = FetchError(f"{type(exc).__name__}: {exc} (raised in loader worker process {os.getpid()})")
        carried.__traceback__ = None
        carried.__cause__ = carried.__context__ = None
        return cls(carried, text, os.getpid())

    def rebuild(self) -> BaseException:
        """The original exception, its ``__cause__`` the worker's traceback."""
        exc = self.exc
        exc.__cause__ = WorkerTraceback(f"in loader worker process {self.pid}:\n{self.traceback.rstrip()}")
        return exc


@dataclass
class Failure:
    """An exception travelling through the pipeline as an item (the last one of a pass)."""

    exc: BaseException
