"""How one writer owns a score store: create-only writes, never read-then-write.

Every commit of the store is an immutable object ``commits/<generation>.json`` created
only if it does not exist yet: on S3 a PUT with ``If-None-Match: *`` (s3fs
``mode="create"``), locally a hard link of a finished temporary file, which fails if
the name exists (the same guarantee as ``O_EXCL``, but readers never see a half-written
file). So exactly one process wins each generation number. Opening a writer commits
the next generation under its own id; a writer opened earlier then loses its next
create, however its reads and writes interleave with the newcomer's, and stops with
:class:`~shardprune.errors.OwnershipLostError` instead of overwriting newer state.
"""

from __future__ import annotations

import os
import uuid

from shardprune.errors import OwnershipLostError
from shardprune.storage import Storage


def put_if_absent(storage: Storage, rel: str, data: bytes) -> bool:
    """Create ``rel`` holding ``data`` unless it exists; True if this call created it.

    A retried request whose first attempt landed finds its own bytes there; that counts
    as created, since the content is exactly what this caller wrote.
    """
    path = storage.path(rel)
    try:
        if storage.is_local:
            _link_new(storage, rel, data)
        else:
            storage.fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        if not storage.is_local:
            storage.fs.invalidate_cache(path)
        return storage.read_bytes(rel) == data


def _link_new(storage: Storage, rel: str, data: bytes) -> None:
    tmp = f"{rel}.tmp-{uuid.uuid4().hex}"
    storage.write_bytes_atomic(tmp, data)  # complete and fsynced before it gets its real name
    try:
        os.link(storage.path(tmp), storage.path(rel))  # FileExistsError if another writer was first
    finally:
        os.unlink(storage.path(tmp))


def lost(url: str, me: str, winner: str | None) -> OwnershipLostError:
    """The error a writer raises once another writer holds the store."""
    other = "nobody (the pointer was deleted)" if winner is None else f"writer {winner[:8]}"
    return OwnershipLostError(
        f"score store {url} is now owned by {other}, not by this writer {me[:8]}; another process "
        "opened it as a writer. Only one writer per store URL may exist: open the other processes "
        "with writer=False; in a torch.distributed job (torchrun, Lightning DDP) open it on every rank "
        "with shardprune.dist.DistributedScores.open(...), after the process group exists (rank 0 writes)"
    )
