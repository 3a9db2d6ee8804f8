"""A live store belongs to the process that opened it, and warns if it dies unflushed.

Its thread and fsspec client stay in the opening process: pickling is refused and a
forked child's calls raise. A writer dropped without ``close()`` (the reports of the
last epoch still queued or in dirty chunks) is found by a ``weakref.finalize`` hook
that warns with :class:`~shardprune.errors.UnflushedScoresWarning` and stops the
store's threads; nothing is written from the finalizer, since it may run at
interpreter exit.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable

from shardprune.errors import ScoreStoreError, UnflushedScoresWarning


class ProcessBinding:
    """Ties a store to its process and to a finalizer that runs if it is never closed.

    Args:
        owner: The store object.
        url: Its URL, for messages.
        unflushed: Returns a description of what would be lost (empty: nothing).
        stop: Stops the store's threads; must not reference ``owner``.
    """

    def __init__(self, owner: object, url: str, unflushed: Callable[[], str], stop: Callable[[], None]) -> None:
        self.url = url
        self.pid = os.getpid()
        self._finalizer = weakref.finalize(owner, _collected, url, self.pid, unflushed, stop)

    def check(self) -> None:
        """Raise unless called from the opening process."""
        if os.getpid() != self.pid:
            raise ScoreStoreError(
                f"ScoreStore({self.url!r}) was opened in process {self.pid} and used in process "
                f"{os.getpid()} (a forked worker?). A store cannot cross fork: its thread and fsspec client "
                "stay in the parent. Use store.snapshot() in workers, or open the store in the child"
            )

    @property
    def here(self) -> bool:
        return os.getpid() == self.pid

    def closed(self) -> None:
        """The store was closed properly: the finalizer has nothing to do."""
        self._finalizer.detach()

    def pickle_error(self) -> ScoreStoreError:
        return ScoreStoreError(
            f"ScoreStore({self.url!r}) cannot be pickled: it owns a background thread and the only "
            "write access to its store. Give worker processes store.snapshot() (plain arrays), or open "
            "ScoreStore(..., writer=False) inside the worker"
        )


def _collected(url: str, pid: int, unflushed: Callable[[], str], stop: Callable[[], None]) -> None:
    if os.getpid() != pid:
        return
    lost = unflushed()
    stop()
    if lost:
        warnings.warn(
            f"ScoreStore({url!r}) was garbage-collected without close(): {lost} never reached the store "
            "and are lost. Call store.close() after training, or open it with "
            "`with ScoreStore(...) as store:`",
            UnflushedScoresWarning,
            stacklevel=2,
        )
