"""Reading and writing one generation: a zarr v3 group holding the score columns.

A generation is written once and never changed; it holds only the chunk-aligned
blocks that were dirty when it was flushed (the other chunks are zarr fill values,
never read: the commit's chunk map says which generation holds each chunk).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shardprune.errors import ScoreStoreError
from shardprune.scores.snapshot import COLUMNS, FILL, fresh_columns
from shardprune.storage import Storage

if TYPE_CHECKING:
    from shardprune.scores.generations import Commit


def _zarr_store(storage: Storage, rel: str, *, read_only: bool) -> Any:
    from zarr.storage import FsspecStore, LocalStore

    if storage.is_local:
        return LocalStore(storage.path(rel), read_only=read_only)
    return FsspecStore.from_url(storage.path(rel), storage_options=storage.storage_options, read_only=read_only)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of True in a bool mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2])]


def write_generation(
    storage: Storage,
    dirname: str,
    num_samples: int,
    chunk_size: int,
    blocks: list[tuple[int, dict[str, np.ndarray]]],
) -> None:
    """Write one generation group holding ``blocks`` (chunk-aligned sample ranges).

    Args:
        storage: The store root.
        dirname: New generation directory name (overwritten if a failed attempt left it).
        num_samples: Array length N.
        chunk_size: Chunk length; every block starts on a chunk boundary.
        blocks: ``(start_sample, {column: values})`` pairs; values end on a chunk
            boundary or at N.
    """
    import zarr

    group = zarr.open_group(_zarr_store(storage, dirname, read_only=False), mode="w", zarr_format=3)
    for name, dtype in COLUMNS:
        arr = group.create_array(
            name,
            shape=(num_samples,),
            chunks=(chunk_size,),
            dtype=dtype,
            fill_value=FILL[name],
            compressors=None,
        )
        for start, cols in blocks:
            values = cols[name]
            arr[start : start + len(values)] = values


def read_columns(storage: Storage, commit: Commit, chunk_map: list[int]) -> dict[str, np.ndarray]:
    """Assemble the full columns described by ``chunk_map`` (an entry per chunk)."""
    import zarr

    columns = fresh_columns(commit.num_samples)
    owners = np.asarray(chunk_map, dtype=np.int64)
    cs = commit.chunk_size
    for d in np.unique(owners[owners >= 0]):
        where = storage.path(commit.dirs[int(d)])
        try:
            group = zarr.open_group(_zarr_store(storage, commit.dirs[int(d)], read_only=True), mode="r")
        except FileNotFoundError as exc:
            raise ScoreStoreError(
                f"generation {where} referenced by the commit of generation {commit.generation} is missing; "
                "the store was modified outside shardprune"
            ) from exc
        for name, _ in COLUMNS:
            arr: Any = group[name]
            for a, b in runs(owners == d):
                lo, hi = a * cs, min(b * cs, commit.num_samples)
                columns[name][lo:hi] = arr[lo:hi]
    return columns
