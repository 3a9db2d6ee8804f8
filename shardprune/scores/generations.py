"""How the score store lies on disk or in a bucket, and the protocol that commits to it.

Layout under the store URL::

    scores.json                      the pointer: a copy of the newest commit
    commits/0000000042.json          one immutable object per commit, created only if absent
    gen-00000042-3f2a9c1e-5b0d17aa/  one zarr v3 group per flush (generation, writer, attempt)
        loss/ loss_ema/ delta_ema/ visits/ last_epoch/      arrays of length N

A commit (:class:`Commit`) maps every chunk to the generation holding its latest
version (``-1``: never written, i.e. all samples in it unseen). The commit protocol
(:func:`commit_dirty`, :func:`roll_back`, both through :func:`publish`):

1. Write the chunks that changed since the last commit into a *new* generation group.
2. Create ``commits/<g+1>.json`` only if absent (:mod:`~shardprune.scores.ownership`).
   This is the one ownership check: exactly one writer wins each generation number,
   and the loser raises :class:`~shardprune.errors.OwnershipLostError`.
3. Replace ``scores.json`` atomically with the same content (local: temporary file +
   ``os.replace``; S3: one PUT). Before step 2, a pointer naming a newer generation than the
   writer's last commit stops the writer too.
4. Delete generations and commit objects that nothing references any more.

From step 2 on the commit is durable, so a failure in steps 3-4 is left to the next commit to
repair. A writer whose create landed but whose reply was lost finds its own commit at that
number next time and builds on it.

Readers take ``scores.json`` and then any newer ``commits/`` objects (a writer killed
between steps 2 and 3), so they always open the last complete state. A process killed
in step 1 leaves a partial generation that no commit references; the next successful
commit deletes it. Generations referenced by the current map, the previous map or a
pin (a named state an epoch or checkpoint must be able to reload) are kept. Generation
names carry the writer's id, so two writers never write the same chunk file.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shardprune.errors import ScoreStoreError
from shardprune.scores import ownership
from shardprune.scores.zarrio import write_generation
from shardprune.storage import Storage

POINTER_NAME = "scores.json"
FORMAT_NAME = "shardprune-scores"
FORMAT_VERSION = 1
GEN_PREFIX = "gen-"
#: Pins kept in the pointer; older ones are dropped with their generations.
MAX_PINS = 8
#: Above this many live generations a flush rewrites every chunk, so reads stay cheap.
MAX_LIVE_GENERATIONS = 16
COMMITS_DIR = "commits"
#: Commit objects kept below the newest. A writer that fell further behind is still
#: stopped, by step 3's pointer check.
KEEP_COMMITS = 64


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

    def successor(self, writer: str) -> "Commit":
        """The next commit by ``writer``: the same maps, one generation later."""
        new = copy.deepcopy(self)
        new.generation += 1
        new.writer = writer
        new.previous = list(self.chunks)
        return new

    def needs_rewrite(self) -> bool:
        """True when so many generations are live that the next flush should rewrite every chunk."""
        return len({self.dirs[i] for i in self.chunks if i >= 0}) >= MAX_LIVE_GENERATIONS

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


def commit_name(generation: int) -> str:
    """Where the commit of ``generation`` lives, below the store root."""
    return f"{COMMITS_DIR}/{generation:010d}.json"


def _read(storage: Storage, rel: str) -> Commit | None:
    if not storage.is_local:
        # s3fs answers "not found" from a cached listing; another writer may have created it since.
        storage.fs.invalidate_cache(storage.path(rel))
    try:
        data = storage.read_bytes(rel)
    except FileNotFoundError:
        return None
    return Commit.from_json(data, storage.path(rel))


def read_commit(storage: Storage) -> Commit | None:
    """The newest commit, or None where no store exists yet."""
    head = _read(storage, POINTER_NAME)
    while True:
        newer = _read(storage, commit_name(1 if head is None else head.generation + 1))
        if newer is None:
            return head
        head = newer


def keep_pins(pins: list[dict[str, Any]], protect: str | tuple[str, ...]) -> list[dict[str, Any]]:
    """The newest ``MAX_PINS`` pins, always including those of ``protect`` if present.

    ``protect`` is the snapshot the current epoch was planned from (and the one the next
    epoch is being planned from, near an epoch's end): a resume re-plans the epoch from
    it, so frequent checkpoints (one pin each) must not push it out.
    """
    if len(pins) <= MAX_PINS:
        return pins
    wanted = {protect} if isinstance(protect, str) else set(protect)
    kept = [p for p in pins if p["fingerprint"] in wanted][-len(wanted) :]
    others = [p for p in pins if p["fingerprint"] not in wanted]
    return kept + others[len(others) - (MAX_PINS - len(kept)) :]


class _OwnCommitExists(Exception):
    """The generation is taken by this writer's own earlier attempt (its create landed, the reply did not)."""

    def __init__(self, commit: Commit) -> None:
        super().__init__(commit.generation)
        self.commit = commit


def publish(storage: Storage, base: Commit, new: Commit) -> None:
    """Steps 2-4 of the protocol: commit ``new`` (generation ``base.generation + 1``).

    Raises:
        OwnershipLostError: another writer committed after ``base``; nothing was changed.
    """
    pointer = _read(storage, POINTER_NAME)
    if pointer is not None and pointer.generation > base.generation:
        if pointer.writer == new.writer:
            raise _OwnCommitExists(pointer)
        # A writer so far behind that its next generation's object was already deleted.
        raise ownership.lost(storage.url, new.writer, pointer.writer)
    if not ownership.put_if_absent(storage, commit_name(new.generation), new.to_json()):
        taken = _read(storage, commit_name(new.generation))
        if taken is not None and taken.writer == new.writer:
            raise _OwnCommitExists(taken)
        winner = read_commit(storage)
        raise ownership.lost(storage.url, new.writer, None if winner is None else winner.writer)
    # The commit is durable from here on: readers find it by probing past the pointer, so a
    # failed pointer update or clean-up is repaired by the next commit, never reported.
    try:
        storage.write_bytes_atomic(POINTER_NAME, new.to_json())
        collect_garbage(storage, new)
    except OSError:
        pass


def _advance(storage: Storage, base: Commit, writer: str, change: Callable[[Commit], None]) -> Commit:
    """Publish ``base``'s successor as modified by ``change``, on top of this writer's own
    earlier commit if an attempt whose reply was lost already took the generation."""
    while True:
        new = base.successor(writer)
        change(new)
        new.compact_dirs()
        try:
            publish(storage, base, new)
            return new
        except _OwnCommitExists as own:
            base = own.commit


def commit_dirty(
    storage: Storage,
    base: Commit,
    writer: str,
    blocks: list[tuple[int, dict[str, np.ndarray]]],
    dirty: np.ndarray,
    pin: dict[str, Any] | None = None,
    protect: str | tuple[str, ...] = "",
) -> Commit:
    """Steps 1-4: write ``blocks`` (the chunks marked in ``dirty``) and commit them.

    Args:
        storage: The store root.
        base: The writer's last commit.
        writer: The writer's id.
        blocks: ``(start_sample, {column: values})`` pairs covering the dirty chunks.
        dirty: bool per chunk.
        pin: ``{"fingerprint", "kind"}`` to record the committed chunk map under.
        protect: Fingerprint(s) of pins that must survive the ``MAX_PINS`` limit.

    Returns:
        The new commit.
    """

    def change(new: Commit) -> None:
        if dirty.any():
            # A fresh name per attempt: a directory an earlier attempt's commit names is never rewritten.
            dirname = f"{GEN_PREFIX}{new.generation:08d}-{writer[:8]}-{uuid.uuid4().hex[:8]}"
            write_generation(storage, dirname, base.num_samples, base.chunk_size, blocks)
            new.dirs.append(dirname)
            index = len(new.dirs) - 1
            new.chunks = [index if d else c for c, d in zip(new.chunks, dirty.tolist())]
        if pin is not None:
            pins = [p for p in new.pins if p["fingerprint"] != pin["fingerprint"]]
            new.pins = keep_pins([*pins, {**pin, "chunks": list(new.chunks)}], protect)

    return _advance(storage, base, writer, change)


def roll_back(storage: Storage, base: Commit, writer: str, fingerprint: str) -> Commit:
    """Commit the chunk map pinned under ``fingerprint``: a rollback rewrites no chunk."""

    def change(new: Commit) -> None:
        new.chunks = list(next(p for p in new.pins if p["fingerprint"] == fingerprint)["chunks"])

    return _advance(storage, base, writer, change)


def collect_garbage(storage: Storage, commit: Commit) -> int:
    """Delete generations and commit objects ``commit`` no longer needs; return how many."""
    live = commit.live_dirs()
    oldest = commit_name(max(0, commit.generation - KEEP_COMMITS)).rsplit("/", 1)[-1]
    removed = 0
    if not storage.is_local:
        # s3fs caches listings; generations written since would be missed.
        storage.fs.invalidate_cache()
    names = [n for n in storage.listdir("") if n.startswith(GEN_PREFIX) and n not in live]
    names += [f"{COMMITS_DIR}/{n}" for n in storage.listdir(COMMITS_DIR) if n.endswith(".json") and n < oldest]
    for name in names:
        try:
            storage.remove(name)
            removed += 1
        except FileNotFoundError:
            pass
    return removed
