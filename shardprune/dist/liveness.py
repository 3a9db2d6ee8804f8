"""Naming the rank that died: a failed collective makes every rank check in through the rendezvous store.

When a peer process dies, gloo fails the survivors' next collective at once, but its
message names a socket ("Connection closed by peer [127.0.0.1]:38571"), not a rank.
Every collective shardprune runs goes through :func:`guarded`, which numbers the
collectives of each group (they run in the same order on every rank, so the numbers
agree). When one fails, the rank writes ``shardprune/alive/<group>/<number>/<rank>``
into the process group's store and waits up to :data:`PROBE_S` seconds for the other
ranks' keys: a rank that never checks in is dead (or hangs), and the error names it.
The waiting is bounded, so a dead peer ends the others within the probe time instead
of the collective timeout.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch.distributed as dist

from shardprune.errors import DistributedError

#: Seconds a rank whose collective failed waits for the other ranks to check in.
PROBE_S = 10.0
_POLL_S = 0.05
#: Per process group: a counter of its collectives. Keyed by the group object through a weak
#: reference: a strong one kept a destroyed group alive until the interpreter's final teardown,
#: where gloo's destructor aborted the process ("terminate called without an active exception",
#: about one exit in 20 on a loaded machine). A dead reference's entry is dropped, so an id reused
#: by a new group starts a new count.
_counters: dict[int, tuple[weakref.ref[Any], Iterator[int]]] = {}
T = TypeVar("T")


def _next_number(group: Any) -> int:
    # A re-initialised WORLD is a new object, so its numbering starts again at 0 on every rank.
    pg = group if group is not None else dist.group.WORLD
    for key in [k for k, (ref, _) in _counters.items() if ref() is None]:
        del _counters[key]
    entry = _counters.get(id(pg))
    if entry is None or entry[0]() is not pg:
        entry = _counters[id(pg)] = (weakref.ref(pg), itertools.count())
    return next(entry[1])


def guarded(what: str, fn: Callable[[], T], group: Any = None) -> T:
    """Run the collective ``fn``; turn a backend failure into a :class:`DistributedError` naming the dead ranks."""
    number = _next_number(group)
    try:
        return fn()
    except DistributedError:
        raise
    except RuntimeError as exc:  # torch's DistBackendError is a RuntimeError
        raise _explain(what, number, group, exc) from exc


def _default_store() -> Any:
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private helper: without it the error names no rank
        return None


def _missing(number: int, group: Any) -> list[int] | None:
    """Global ranks of ``group`` that did not check in for collective ``number``; None: store unreachable."""
    store = _default_store()
    if store is None:
        return None
    ranks = dist.get_process_group_ranks(group if group is not None else dist.group.WORLD)
    prefix = f"shardprune/alive/{min(ranks)}-{len(ranks)}/{number}/"
    try:
        store.set(prefix + str(dist.get_rank()), "1")
        deadline = time.monotonic() + PROBE_S
        while True:
            missing = [r for r in ranks if not store.check([prefix + str(r)])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(_POLL_S)
    except Exception:  # noqa: BLE001 - the store itself is gone
        return None


def _explain(what: str, number: int, group: Any, exc: BaseException) -> DistributedError:
    cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    world = dist.get_world_size(group)
    missing = _missing(number, group)
    if missing is None:
        return DistributedError(
            f"collective #{number} ({what}) failed and the rendezvous store is unreachable too: its host "
            f"(rank 0 under init_method env://, or the torchrun agent) is gone. Restart the job from the last "
            f"checkpoint. ({cause})"
        )
    if not missing:
        return DistributedError(
            f"collective #{number} ({what}) failed on rank {dist.get_rank()} while all {world} ranks are alive; "
            f"they called different collectives (every rank must call the same ones in the same order). ({cause})"
        )
    return DistributedError(
        f"rank(s) {missing} of {world} stopped answering in collective #{number} ({what}): they did not check in "
        f"within {PROBE_S:.0f} s, so the process died or hangs. This rank stops now; restart the job from the "
        f"last checkpoint. ({cause})"
    )
