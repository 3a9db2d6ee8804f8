"""A local disk cache of fetched sample ranges, with a size limit (``cache_dir``, ``cache_limit``).

Pruning is per sample, so the cache is too: a sample fetched from object storage in one
epoch and kept again in a later one is read from local disk, and only the samples never
cached (or evicted) go to the object store. Layout under ``cache_dir``::

    .lock                        flock'ed by every writer (all processes of the node)
    <dataset key>/source.json    the dataset URL and manifest checksum (for people)
    <dataset key>/<shard>.bin    the cached samples' bytes, packed one after another
    <dataset key>/<shard>.log    presence log: one 32-byte record per cached sample

The dataset key hashes the cache layout's version, the dataset's URL and its manifest
checksum (which covers every sample's offset, length and CRC32), so a rewritten dataset
gets a new key and never reads stale bytes. Disk use is what is cached: each write appends
its samples' bytes to the end of the shard's data file, so a cached sample takes its own
length, not the disk blocks its range of the shard touches (the first layout wrote each
sample at its own shard offset in a sparse file: a 4 KiB sample at an offset that is not a
multiple of 4 KiB took two 4 KiB blocks; at a limit of half the dataset 0.31-0.34 of the kept
4 KiB samples were hits, packed 0.40-0.42, ``benchmarks/results/cache.md``).

Crash safety: a sample's log record (shard offset, length, position in the data file,
CRC32 of the three) is appended only after its bytes are written, so a process killed
mid-write never marks a sample present (bytes appended without a record are dead space,
freed with the shard);
a torn record at the end of a log is ignored by readers and cut off by the next writer
(under the lock). Bytes can still rot or be overwritten: the fetcher checks every cached
sample against the manifest CRC32 and treats a mismatch as a miss (:meth:`RangeCache.drop`
the shard, read from storage), so a bad cache never yields a wrong sample.

Size limit: disk use is counted as real allocated blocks (``st_blocks``) of every file
under ``cache_dir`` (all datasets sharing it). Before a write, under the lock, whole
shards are evicted until the write fits (:func:`eviction_order`): first the shards of
other datasets, least recently used first; then this dataset's, *most* recently used
first (a shard's log mtime, touched on every read that hits it). An epoch reads every
shard once, so the shard used longest ago is the one the epoch still has to read, and
least-recently-used eviction would throw away exactly what is needed next (measured: 0.26-0.38
of the samples served at a limit of half the dataset, against 0.5 possible); the shards read
most recently are the ones not needed again until the next epoch. The shard being written is
never evicted to make room for itself, and a write that still does not fit is skipped (reads
keep working). After the write the use is measured again, so filesystem metadata blocks
cannot push it past the limit. Evicting a shard another process is reading is safe: that
process keeps reading the unlinked file through its open descriptor (same bytes) and
reopens on its next write.

Failures while training (disk full, directory removed or read-only) never fail an epoch:
caching stops in that process with one ``logging`` warning, and samples come from storage.

A :class:`RangeCache` pickles as its settings only; each process opens its own files
(fork, forkserver and spawn safe).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shardprune.errors import ConfigError
from shardprune.validate import check_float, check_int

if TYPE_CHECKING:
    from shardprune.dataset import ShardedDataset

log = logging.getLogger("shardprune.cache")

__all__ = ["RangeCache", "dataset_key", "eviction_order", "open_cache", "parse_cache_limit"]

#: One presence record: the sample's offset in the shard, its length, its position in the data
#: file (int64) and the CRC32 of those 24 bytes, padded to 32.
_RECORD = struct.Struct("<qqqI4x")
_FIELDS = struct.Struct("<qqq")
#: The on-disk layout, part of the dataset key: a cache folder of another layout is another
#: dataset's to this code (evicted first, least recently used first).
LAYOUT = 2
_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
#: Shards whose files a process keeps open at once (two descriptors each); the least recently
#: used one is closed beyond it, so a dataset of thousands of shards stays within ``ulimit -n``.
MAX_OPEN_SHARDS = 64
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")
_LIMIT_FIX = 'pass bytes as an int >= 0, a string such as "20GB" or "500MiB", or None for no limit'


def parse_cache_limit(value: Any) -> int | None:
    """``cache_limit`` in bytes: an int, a size string (``"20GB"`` = 20e9, ``"500MiB"`` =
    500 * 2**20; ``k``/``m``/``g`` alone are binary, as MosaicML Streaming's), or None (no limit).

    Raises:
        ConfigError: naming the value, the allowed forms and the fix.
    """
    if value is None:
        return None
    if isinstance(value, str):
        found = _SIZE.match(value)
        unit = found.group(2).lower() if found else ""
        if found is None or unit not in _UNITS:
            raise ConfigError(f"cache_limit={value!r} is not a size; units are {', '.join(u for u in _UNITS if u)}; "
                              f"{_LIMIT_FIX}")
        number = check_float("cache_limit", float(found.group(1)), 0, fix=_LIMIT_FIX)
        return int(number * _UNITS[unit])
    return check_int("cache_limit", value, 0, fix=_LIMIT_FIX)


def dataset_key(url: str, manifest_sha256: str) -> str:
    """The cache folder name of a dataset: changes when its URL or its manifest does."""
    return hashlib.sha256(f"layout {LAYOUT}\n{url}\n{manifest_sha256}".encode()).hexdigest()[:24]


@dataclass
class _Shard:
    """This process's open files and presence index of one cached shard."""

    data_fd: int
    log_fd: int
    log_pos: int = 0
    index: dict[int, tuple[int, int]] = field(default_factory=dict)  # shard offset -> (length, data position)


class RangeCache:
    """A per-sample cache of one dataset's shard ranges in a local folder.

    Args:
        cache_dir: Local folder (created if missing); may be shared by every loader, worker
            process and rank of the node, and by several datasets.
        cache_limit: Most bytes of disk the folder may use (see :func:`parse_cache_limit`);
            None: no limit.
        key: The dataset's key (:func:`dataset_key`).
        source: What the key stands for, written to ``source.json`` for people.

    Raises:
        ConfigError: ``cache_dir`` is not a local folder this process can write, or
            ``cache_limit`` is not a size.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], cache_limit: Any, key: str,
                 source: dict[str, str] | None = None) -> None:
        if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
            raise ConfigError(f"cache_dir={cache_dir!r} must be a local folder path (str or os.PathLike); pass e.g. "
                              "cache_dir='/tmp/shardprune-cache', or None for no cache")
        path = os.fspath(cache_dir)
        if "://" in path:
            raise ConfigError(f"cache_dir={path!r} must be a local folder, not a URL; pass e.g. /tmp/shardprune-cache")
        self.cache_dir = os.path.abspath(path)
        self.cache_limit = parse_cache_limit(cache_limit)
        self.key = key
        self.folder = os.path.join(self.cache_dir, key)
        try:
            os.makedirs(self.folder, exist_ok=True)
            if source is not None and not os.path.exists(os.path.join(self.folder, "source.json")):
                with open(os.path.join(self.folder, "source.json"), "w", encoding="utf-8") as f:
                    json.dump(source, f)
            open(os.path.join(self.cache_dir, ".lock"), "a").close()
        except OSError as exc:
            raise ConfigError(
                f"cache_dir={path!r} cannot be used ({exc.strerror or exc}): it must be a folder this process "
                "can create and write; pass another path, or cache_dir=None for no cache"
            ) from exc
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise ConfigError(f"cache_dir={path!r} is not writable by this process; pass a writable folder or None")
        self._reset()

    def _reset(self) -> None:
        # The threads of one process (a reader reads ahead on two) share its open files:
        # one at a time. flock (per open file) orders processes, and threads within writes.
        self._thread_lock = threading.RLock()
        self._pid = os.getpid()
        self._shards: dict[int, _Shard] = {}
        self._writes_off = False
        self._block = 4096
        try:
            self._block = os.statvfs(self.cache_dir).f_frsize or 4096
        except OSError:
            pass

    # -- pickling: settings only ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, "cache_limit": self.cache_limit, "key": self.key, "folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"RangeCache({self.cache_dir!r}, cache_limit={self.cache_limit!r})"

    # -- reads ---------------------------------------------------------------------------
    def lookup(self, shard: int, offsets: Sequence[int], lengths: Sequence[int]) -> list[bytes | None]:
        """The cached bytes of each ``(offset, length)`` range of ``shard``, None where not cached.

        The caller must check the bytes (manifest CRC32) and :meth:`drop` the shard on a mismatch.
        """
        with self._thread_lock:
            return self._lookup(shard, offsets, lengths)

    def _lookup(self, shard: int, offsets: Sequence[int], lengths: Sequence[int]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(offsets)
        try:
            entry = self._open(shard, create=False)
            if entry is None:
                return out
            self._refresh(entry)
            hit = False
            for k, (off, n) in enumerate(zip(offsets, lengths)):
                found = entry.index.get(off)
                if found is not None and found[0] == n:
                    data = os.pread(entry.data_fd, n, found[1])
                    if len(data) == n:
                        out[k] = data
                        hit = True
            if hit:
                # Recency for the LRU eviction: the log's mtime.
                os.utime(entry.log_fd)
        except OSError as exc:
            self._failed("reading", exc)
        return out

    # -- writes --------------------------------------------------------------------------
    def store(self, shard: int, items: Sequence[tuple[int, bytes]]) -> None:
        """Cache ``(offset, bytes)`` samples of ``shard`` (verified bytes only), within the limit.

        Never raises: a failure stops caching in this process with one warning.
        """
        if self._writes_off or not items or self.cache_limit == 0:
            return
        try:
            with self._thread_lock, self._locked():
                entry = self._open(shard, create=True)
                if entry is None:
                    raise FileNotFoundError(errno.ENOENT, "the cache folder was removed", self.folder)
                self._refresh(entry, repair=True)
                todo = [(o, d) for o, d in items if entry.index.get(o, (-1, 0))[0] != len(d)]
                if not todo:
                    return
                if self.cache_limit is not None and not self._make_room(shard, entry, todo):
                    return
                # Appended at the end (we hold the lock: nobody else appends); one write.
                end = os.fstat(entry.data_fd).st_size
                blob = b"".join(d for _, d in todo)
                if os.pwrite(entry.data_fd, blob, end) != len(blob):
                    raise OSError(errno.ENOSPC, "short write", self.folder)
                positions = itertools.accumulate((len(d) for _, d in todo[:-1]), initial=end)
                # The records go after the bytes: a crash in between leaves them unmarked. A
                # short write leaves a torn record, which readers skip and the next writer cuts.
                records = b"".join(_record(o, len(d), pos) for (o, d), pos in zip(todo, positions))
                if os.write(entry.log_fd, records) != len(records):
                    raise OSError(errno.ENOSPC, "short write", self.folder)
                self._refresh(entry)
                if self.cache_limit is not None:
                    self._enforce(shard)
        except OSError as exc:
            self._failed("writing", exc)

    def drop(self, shard: int) -> None:
        """Remove ``shard``'s cached samples (its bytes failed the manifest CRC32)."""
        try:
            with self._thread_lock, self._locked():
                self._remove(self.key, shard)
        except OSError as exc:
            self._failed("dropping", exc)

    def disk_usage(self) -> int:
        """Bytes of disk used by every file under ``cache_dir`` (allocated blocks)."""
        entries, other = self._scan()
        return other + sum(e[2] for e in entries)

    def close(self) -> None:
        """Close this process's files (a later call reopens them)."""
        with self._thread_lock:
            self._close_all()

    def _close_all(self) -> None:
        if self._pid == os.getpid():
            for entry in self._shards.values():
                _close(entry)
        self._shards = {}

    # -- internals -----------------------------------------------------------------------
    def _paths(self, key: str, shard: int) -> tuple[str, str]:
        base = os.path.join(self.cache_dir, key, str(shard))
        return base + ".bin", base + ".log"

    def _open(self, shard: int, *, create: bool) -> _Shard | None:
        """This process's handle of ``shard``; reopened once the shard was evicted (its log unlinked)."""
        if self._pid != os.getpid():
            # Inherited across fork: the parent's descriptors and offsets are not ours.
            self._shards, self._pid = {}, os.getpid()
        entry = self._shards.pop(shard, None)
        if entry is not None:
            # Files are only ever unlinked, never replaced: a log still linked is the current one
            # (an inode number alone is not proof, ext4 reuses them at once).
            if os.fstat(entry.log_fd).st_nlink > 0:
                self._shards[shard] = entry  # most recently used last
                return entry
            _close(entry)
        data_path, log_path = self._paths(self.key, shard)
        flags = os.O_CREAT if create else 0
        # The log first: a writer creates the data file before the log, an eviction unlinks
        # the log before the data file, so an open log means its data file is there.
        try:
            log_fd = os.open(log_path, os.O_RDWR | os.O_APPEND | flags, 0o644)
        except FileNotFoundError:
            return None
        try:
            data_fd = os.open(data_path, os.O_RDWR | flags, 0o644)
        except FileNotFoundError:
            os.close(log_fd)
            return None
        entry = _Shard(data_fd, log_fd)
        if os.fstat(log_fd).st_nlink == 0:
            _close(entry)  # evicted while we opened it: the data file may be a newer one
            return None
        self._shards[shard] = entry
        while len(self._shards) > MAX_OPEN_SHARDS:
            _close(self._shards.pop(next(iter(self._shards))))
        return entry

    def _refresh(self, entry: _Shard, repair: bool = False) -> None:
        """Read the records other processes appended since the last look."""
        size = os.fstat(entry.log_fd).st_size
        whole = entry.log_pos + (size - entry.log_pos) // _RECORD.size * _RECORD.size
        if repair and whole != size:
            # A writer died mid-append (we hold the lock, so nobody is appending now).
            os.ftruncate(entry.log_fd, whole)
        if whole <= entry.log_pos:
            return
        tail = os.pread(entry.log_fd, whole - entry.log_pos, entry.log_pos)
        for off, n, pos, check in _RECORD.iter_unpack(tail[: len(tail) // _RECORD.size * _RECORD.size]):
            if check == zlib.crc32(_FIELDS.pack(off, n, pos)) and off >= 0 and n > 0 and pos >= 0:
                entry.index[off] = (n, pos)
        entry.log_pos += len(tail) // _RECORD.size * _RECORD.size

    def _new_bytes(self, entry: _Shard, todo: Sequence[tuple[int, bytes]]) -> int:
        """Disk the write of ``todo`` adds at most: the data file's and the log's new blocks, one metadata block."""
        block = self._block

        def grown(size: int, added: int) -> int:
            return -(-(size + added) // block) - (-(-size // block))

        data_size = os.fstat(entry.data_fd).st_size
        data_blocks = grown(data_size, sum(len(d) for _, d in todo))
        log_blocks = grown(entry.log_pos, len(todo) * _RECORD.size)
        return (data_blocks + log_blocks + 1) * block

    def _make_room(self, shard: int, entry: _Shard, todo: Sequence[tuple[int, bytes]]) -> bool:
        """Evict other shards (:func:`eviction_order`) until the write fits; False if it cannot."""
        limit = self.cache_limit
        assert limit is not None
        need = self._new_bytes(entry, todo)
        entries, other = self._scan()
        used = other + sum(e[2] for e in entries)
        if used + need <= limit:
            return True
        for key, other, nbytes, _ in eviction_order(entries, self.key):
            if (key, other) == (self.key, shard):
                continue  # never evict what is being written to make room for itself
            self._remove(key, other)
            used -= nbytes
            if used + need <= limit:
                return True
        return False

    def _enforce(self, shard: int) -> None:
        """After a write: the measured use is within the limit, else evict (this shard last)."""
        limit = self.cache_limit
        assert limit is not None
        entries, other = self._scan()
        used = other + sum(e[2] for e in entries)
        ordered = sorted(eviction_order(entries, self.key), key=lambda e: e[:2] == (self.key, shard))
        for key, other, nbytes, _ in ordered:
            if used <= limit:
                return
            self._remove(key, other)
            used -= nbytes

    def _scan(self) -> tuple[list[tuple[str, int, int, int]], int]:
        """Every cached shard under ``cache_dir`` as (dataset key, shard, disk bytes, last use ns),
        and the disk bytes of everything else there (folders, lock, ``source.json``)."""
        found: dict[tuple[str, int], list[int]] = {}
        other = 0
        for folder in os.scandir(self.cache_dir):
            try:
                other += folder.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:
                continue
            if not folder.is_dir(follow_symlinks=False):
                continue
            for item in os.scandir(folder.path):
                try:
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                stem, dot, ext = item.name.partition(".")
                if not dot or not stem.isdigit() or ext not in ("bin", "log"):
                    other += st.st_blocks * 512
                    continue
                slot = found.setdefault((folder.name, int(stem)), [0, 0])
                slot[0] += st.st_blocks * 512
                if ext == "log":
                    slot[1] = st.st_mtime_ns
        return [(key, shard, v[0], v[1]) for (key, shard), v in found.items()], other

    def _remove(self, key: str, shard: int) -> None:
        if key == self.key and shard in self._shards:
            _close(self._shards.pop(shard))
        # The log first: from then on no process sees the shard's samples as present.
        for path in reversed(self._paths(key, shard)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.debug("cache: evicted shard %d of %s", shard, key)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.cache_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _failed(self, what: str, exc: OSError) -> None:
        if not self._writes_off:
            full = " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            log.warning("cache: %s %s failed%s: %s; caching is off in this process (pid %d), samples are read "
                        "from storage", what, self.folder, full, exc, os.getpid())
        self._writes_off = True


def eviction_order(entries: Sequence[tuple[str, int, int, int]], key: str) -> list[tuple[str, int, int, int]]:
    """Cached shards ``(dataset key, shard, disk bytes, last use ns)`` in the order they are evicted.

    Other datasets' shards first, least recently used first (nothing reads them now); then
    dataset ``key``'s, most recently used first (see the module doc: within an epoch the
    least recently used shard is the one still to be read).
    """
    others = sorted((e for e in entries if e[0] != key), key=lambda e: e[3])
    mine = sorted((e for e in entries if e[0] == key), key=lambda e: -e[3])
    return others + mine


def _record(offset: int, length: int, position: int) -> bytes:
    return _RECORD.pack(offset, length, position, zlib.crc32(_FIELDS.pack(offset, length, position)))


def _close(entry: _Shard) -> None:
    for fd in (entry.data_fd, entry.log_fd):
        try:
            os.close(fd)
        except OSError:
            pass



def open_cache(dataset: ShardedDataset, cache_dir: str | os.PathLike[str] | None, cache_limit: Any) -> RangeCache | None:
    """The cache of ``dataset`` in ``cache_dir`` (None: no cache), as the loader's options ask.

    Raises:
        ConfigError: a local dataset (the cache is for object storage), ``cache_limit``
            without ``cache_dir``, or a bad ``cache_dir`` / ``cache_limit``.
    """
    if cache_dir is None:
        if cache_limit is not None:
            raise ConfigError(f"cache_limit={cache_limit!r} needs cache_dir=; pass a local folder as cache_dir, "
                              "or drop cache_limit")
        return None
    storage = dataset.storage
    if storage.is_local:
        raise ConfigError(
            f"cache_dir={os.fspath(cache_dir)!r} with the local dataset {storage.url!r}: the cache is for object "
            "storage (s3://...), a local dataset is read from disk already; pass cache_dir=None"
        )
    sha = dataset.header.manifest_sha256
    return RangeCache(cache_dir, cache_limit, dataset_key(storage.url, sha), {"url": storage.url, "manifest_sha256": sha})
