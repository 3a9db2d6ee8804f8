"""Whole-job checkpoints of a distributed run: every rank's loader position, the scores, the policy.

:func:`save_checkpoint` (collective) syncs and pins the scores on rank 0, gathers every
rank's loader state, checks that every rank stands at the same epoch and batch, and
rank 0 writes one JSON document atomically (temporary file + rename locally, one PUT on
S3, through :mod:`shardprune.storage`). :func:`load_checkpoint` (collective) has rank 0
read it and broadcast it, restores the pinned scores (rank 0's writer first, then the
replicas), the policy and each rank's own loader state.

World size rule: a checkpoint taken in the middle of an epoch resumes only under the
world size that wrote it. The loader's epoch plan cuts the global read order into one
contiguous slice per rank, so the remaining samples of a half-finished epoch are defined
per rank; under another rank count they would be visited twice or not at all. Such a
resume is refused with :class:`~shardprune.errors.CheckpointMismatchError` showing both
sizes. A checkpoint taken when every rank had finished its epoch (``epoch_complete``)
holds nothing rank-specific that is still to come: it resumes under any world size. The
scores and the policy are restored, the loader is left unplanned, and the caller goes
on with ``loader.set_epoch(epoch + 1)``, which plans the next epoch for the new layout
from the same scores (the per-rank batch size may change too).

Without a process group (a single-process run), both work with a plain
:class:`~shardprune.scores.ScoreStore` (or no store): the same document, world size 1,
no collective.

Checkpoint format (JSON, schema :data:`CHECKPOINT`): ``{"version", "world_size", "epoch", "batches_yielded",
"epoch_complete" (every rank had yielded its whole epoch), "loaders" (one
``StreamingLoader.state_dict`` per rank, in rank order), "store" (rank 0's
``ScoreStore.state_dict``: the scores pinned in the store), "policy", "extra" (the
caller's JSON-able data, e.g. the model checkpoint's path)}``. Model and
optimiser weights are the caller's (``torch.save`` on rank 0); see ``tools/train_ddp.py``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Protocol

import torch.distributed as dist

from shardprune.dist.collectives import all_gather_bytes, broadcast_bytes, raise_together
from shardprune.errors import CheckpointMismatchError, DistributedError
from shardprune.state import StateSchema, check_config, jsonable
from shardprune.storage import Storage

if TYPE_CHECKING:  # the loader imports shardprune.dist.world, so no import at run time
    from shardprune.loader.streaming import StreamingLoader

#: The checkpoint document, loaded strictly.
CHECKPOINT = StateSchema(
    "checkpoint",
    1,
    frozenset(
        {"batches_yielded", "epoch", "epoch_complete", "extra", "loaders", "policy", "store", "version", "world_size"}
    ),
)
CHECKPOINT_VERSION = CHECKPOINT.version
CHECKPOINT_KEYS = tuple(sorted(CHECKPOINT.keys))
#: Loader settings an epoch-end checkpoint may change (the per-rank batch usually scales with the ranks).
LAYOUT_KEYS = ("batch_size", "rank", "world_size")


class ScoreState(Protocol):
    """What a checkpoint needs of the scores: a ScoreStore or a DistributedScores."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _group(scores: ScoreState | None) -> tuple[Any, bool]:
    """The scores' process group and whether this is a distributed job (a group exists)."""
    distributed = dist.is_available() and dist.is_initialized()
    return getattr(scores, "group", None), distributed


def _together(error: BaseException | None, group: Any, distributed: bool, what: str) -> None:
    if distributed:
        raise_together(error, group, what)
    elif error is not None:
        raise error


def _split(url: str | os.PathLike[str], storage_options: dict[str, Any] | None) -> tuple[Storage, str]:
    path = os.fspath(url).rstrip("/")
    if "://" in path and not path.startswith("file://"):
        parent, _, name = path.rpartition("/")
    else:
        path = path[len("file://") :] if path.startswith("file://") else path
        parent, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if not name or parent.endswith(":/"):
        raise CheckpointMismatchError(f"checkpoint url {url!r} must name a file, e.g. s3://bucket/run/ckpt.json")
    return Storage(parent, storage_options), name


def save_checkpoint(
    url: str | os.PathLike[str],
    loader: StreamingLoader,
    scores: ScoreState | None,
    *,
    extra: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Checkpoint the whole job to ``url`` (collective under a process group: every rank, same step).

    Args:
        url: The checkpoint file, local or ``s3://bucket/prefix/name.json``; overwritten atomically.
        loader: This rank's loader.
        scores: The job's :class:`DistributedScores`, or in a single process a
            :class:`~shardprune.scores.ScoreStore` or None.
        extra: JSON-able data stored with the checkpoint (default empty).
        storage_options: fsspec options for a remote ``url``.

    Returns:
        The checkpoint document (the same on every rank).

    Raises:
        DistributedError: ranks stand at different epochs or batches, or a rank failed
            (e.g. rank 0 could not write), raised on every rank.
    """
    group, distributed = _group(scores)
    store_state = scores.state_dict() if scores is not None else {}
    mine = loader.state_dict()
    plan = loader.plan
    complete = plan is not None and mine["batches_yielded"] == plan.num_batches
    payload = json.dumps({"state": mine, "complete": complete}, sort_keys=True).encode()
    parts = all_gather_bytes(payload, group) if distributed else [payload]
    gathered = [json.loads(p) for p in parts]
    states = [g["state"] for g in gathered]
    positions = [(s["epoch"], s["batches_yielded"]) for s in states]
    if len(set(positions)) != 1:
        listing = ", ".join(f"rank {r}: epoch {e} batch {b}" for r, (e, b) in enumerate(positions))
        raise DistributedError(
            f"ranks stand at different positions ({listing}); call save_checkpoint on every rank after the "
            "same number of batches"
        )
    world = dist.get_world_size(group) if distributed else 1
    sizes = {s["config"]["world_size"] for s in states}
    if sizes != {world}:
        raise DistributedError(
            f"loaders were built for world_size {sorted(sizes)} but the job has {world} rank(s); build "
            "StreamingLoader after init_process_group"
        )
    policy = loader.policy.state_dict() if callable(getattr(loader.policy, "state_dict", None)) else {}
    doc = CHECKPOINT.make(
        world_size=world,
        epoch=positions[0][0],
        batches_yielded=positions[0][1],
        epoch_complete=all(g["complete"] for g in gathered),
        loaders=states,
        store=store_state,
        policy=jsonable(policy),
        extra=dict(extra or {}),
    )
    error: BaseException | None = None
    if not distributed or dist.get_rank(group) == 0:
        try:
            storage, name = _split(url, storage_options)
            storage.write_bytes_atomic(name, json.dumps(doc, sort_keys=True, indent=1).encode())
        except BaseException as exc:  # noqa: BLE001 - re-raised after telling the other ranks
            error = exc
    _together(error, group, distributed, f"failed while writing checkpoint {os.fspath(url)}")
    return doc


def read_checkpoint(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and check a checkpoint document (local; no process group needed).

    Raises:
        FileNotFoundError: no checkpoint at ``url``.
        CheckpointMismatchError: not a checkpoint of this version.
    """
    storage, name = _split(url, storage_options)
    if not storage.exists(name):
        raise FileNotFoundError(f"no checkpoint at {storage.path(name)}; start without --resume, or fix the path")
    return _parse(storage.read_bytes(name), storage.path(name))


def _parse(data: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CheckpointMismatchError(
            f"checkpoint {where} is not JSON ({exc}); it is not a shardprune checkpoint"
        ) from exc
    return CHECKPOINT.check(doc, f"checkpoint {where}")


def load_checkpoint(
    url: str | os.PathLike[str],
    loader: StreamingLoader,
    scores: ScoreState | None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Resume the whole job from ``url`` (collective under a process group): scores, policy, loader position.

    Args:
        url: The checkpoint written by :func:`save_checkpoint`.
        loader: This rank's loader, built with the same configuration as the saved run.
        scores: The job's :class:`DistributedScores` (opened on the same store URL), or in a
            single process a :class:`~shardprune.scores.ScoreStore` or None.
        storage_options: fsspec options for a remote ``url``.

    Returns:
        The checkpoint's ``extra`` data. Under the same world size the loader stands
        where the checkpoint was taken; after an epoch-end checkpoint of another world
        size it is unplanned: continue with ``loader.set_epoch(epoch + 1)``.

    Raises:
        CheckpointMismatchError: a mid-epoch checkpoint of another world size (both
            sizes are named), another configuration or other scores; raised on every rank.
    """
    group, distributed = _group(scores)
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if distributed else (0, 1)
    data: bytes | None = None
    error: BaseException | None = None
    where = os.fspath(url)
    if rank == 0:
        try:
            storage, name = _split(url, storage_options)
            where = storage.path(name)
            if not storage.exists(name):
                raise FileNotFoundError(f"no checkpoint at {where}; start without resuming, or fix the path")
            data = storage.read_bytes(name)
        except BaseException as exc:  # noqa: BLE001 - re-raised after telling the other ranks
            error = exc
    _together(error, group, distributed, f"failed while reading checkpoint {where}")
    if distributed:
        data = broadcast_bytes(data, 0, group)
    assert data is not None
    doc = _parse(data, where)
    relayout = doc["world_size"] != world
    if relayout and not doc["epoch_complete"]:
        raise CheckpointMismatchError(
            f"checkpoint {where} was written by a job of world_size={doc['world_size']} ranks (in checkpoint); "
            f"this job has world_size={world} (now), and the checkpoint is in the middle of epoch {doc['epoch']} "
            f"(batch {doc['batches_yielded']}). The epoch plan gives each rank a contiguous slice of the read "
            f"order, so a half-done epoch resumes only with the same rank count: relaunch with "
            f"{doc['world_size']} ranks (e.g. torchrun --nproc-per-node), or resume from a checkpoint taken at the "
            "end of an epoch, which any world size can continue"
        )
    if relayout:
        check_config(f"checkpoint {where}", doc["loaders"][0]["config"], loader.config(), ignore=LAYOUT_KEYS)
    if scores is not None:
        scores.load_state_dict(doc["store"])
    error = None
    try:
        if callable(getattr(loader.policy, "load_state_dict", None)) and doc["policy"]:
            loader.policy.load_state_dict(doc["policy"])
        if not relayout:
            loader.load_state_dict(doc["loaders"][rank])
    except BaseException as exc:  # noqa: BLE001 - re-raised after telling the other ranks
        error = exc
    _together(error, group, distributed, f"failed while restoring the loader from {where}")
    extra: dict[str, Any] = doc["extra"]
    return extra
