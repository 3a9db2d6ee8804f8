"""How the score store lies on disk or in a bucket: immutable generations plus one pointer.

Layout under the store URL::

    scores.json                      the pointer (the only object ever overwritten)
    gen-00000007-3f2a9c1e/           one zarr v3 group per flush, written once
        loss/ loss_ema/ delta_ema/ visits/ last_epoch/      arrays of length N

A flush writes only the chunks that changed since the last one into a *new* generation
group, then replaces ``scores.json`` atomically (local: temporary file + ``os.replace``;
S3: one PUT). ``scores.json`` maps every chunk to the generation holding its latest
version (``-1``: never written, i.e. all samples in it unseen). A process killed in
the middle of a flush leaves a partial generation that no pointer references, so
readers always open the last complete state; the next successful commit deletes it.

Generations referenced by the current map, the previous map or a pin (a named state an
epoch or checkpoint must be able to reload) are kept; all others are deleted after
each commit. Generation names carry the writer's id, so two writers can never write the
same chunk file (see ``ScoreStore`` for the ownership rule).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shardprune.errors import ScoreStoreError
from shardprune.scores.snapshot import COLUMNS, FILL, fresh_columns
from shardprune.storage import Storage

POINTER_NAME = "scores.json"
FORMAT_NAME = "shardprune-scores"
FORMAT_VERSION = 1
GEN_PREFIX = "gen-"
#: Pins kept in the pointer; older ones are dropped with their generations.
MAX_PINS = 8
#: Above this many live generations a flush rewrites every chunk, so reads stay cheap.
MAX_LIVE_GENERATIONS = 16


@dataclass
class Commit:
    """The content of ``scores.json``.

    Attributes:
        num_samples: N, from the dataset manifest.
        dataset_fingerprint: The dataset's fingerprint the scores belong to.
        chunk_size: Samples per zarr chunk (and per ownership/flush unit).
        ema_beta: EMA momentum the scores were computed with.
        generation: Number of the latest commit (0: created, nothing written).
        writer: Id of the one process allowed to commit.
        dirs: Generation directory names; chunk maps index into this list.
        chunks: Per chunk, index into ``dirs`` of its latest version, or -1.
        previous: The chunk map of the commit before, kept for readers in flight.
        pins: ``{"fingerprint", "kind", "chunks"}`` states that can be reloaded exactly.
    """

    num_samples: int
    dataset_fingerprint: str
    chunk_size: int
    ema_beta: float
    generation: int = 0
    writer: str = ""
    dirs: list[str] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    previous: list[int] = field(default_factory=list)
    pins: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_size)

    def to_json(self) -> bytes:
        body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "Commit":
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise ScoreStoreError(f"{where} is not valid JSON ({exc}); the score store is damaged") from exc
        if body.get("format") != FORMAT_NAME or body.get("version") != FORMAT_VERSION:
            raise ScoreStoreError(
                f"{where} has format {body.get('format')!r} version {body.get('version')!r}; "
                f"this release reads {FORMAT_NAME!r} version {FORMAT_VERSION}"
            )
        body.pop("format")
        body.pop("version")
        try:
            return cls(**body)
        except TypeError as exc:
            raise ScoreStoreError(f"{where} has unexpected fields ({exc})") from exc

    def live_dirs(self) -> set[str]:
        used = set(self.chunks) | set(self.previous)
        for pin in self.pins:
            used |= set(pin["chunks"])
        return {self.dirs[i] for i in used if i >= 0}

    def compact_dirs(self) -> None:
        """Drop directory names no map references, renumbering the maps."""
        keep = sorted(self.live_dirs())
        index = {name: i for i, name in enumerate(keep)}

        def remap(m: list[int]) -> list[int]:
            return [index[self.dirs[i]] if i >= 0 else -1 for i in m]

        self.chunks = remap(self.chunks)
        self.previous = remap(self.previous)
        for pin in self.pins:
            pin["chunks"] = remap(pin["chunks"])
        self.dirs = keep


def read_commit(storage: Storage) -> Commit | None:
    """The current pointer, or None where no store exists yet."""
    try:
        data = storage.read_bytes(POINTER_NAME)
    except FileNotFoundError:
        return None
    return Commit.from_json(data, storage.path(POINTER_NAME))


def write_commit(storage: Storage, commit: Commit) -> None:
    """Replace the pointer atomically."""
    storage.write_bytes_atomic(POINTER_NAME, commit.to_json())


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
                f"generation {where} referenced by {storage.path(POINTER_NAME)} is missing; "
                "the store was modified outside shardprune"
            ) from exc
        for name, _ in COLUMNS:
            arr: Any = group[name]
            for a, b in runs(owners == d):
                lo, hi = a * cs, min(b * cs, commit.num_samples)
                columns[name][lo:hi] = arr[lo:hi]
    return columns


def collect_garbage(storage: Storage, commit: Commit) -> int:
    """Delete generation directories no map of ``commit`` references; return how many."""
    live = commit.live_dirs()
    removed = 0
    if not storage.is_local:
        # s3fs caches listings; generations written since would be missed.
        storage.fs.invalidate_cache()
    for name in storage.listdir(""):
        if name.startswith(GEN_PREFIX) and name not in live:
            try:
                storage.remove(name)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
