"""Where bytes live: a local directory or an object-store prefix (``s3://bucket/prefix``).

Every byte shardprune reads goes through :meth:`Storage.read_range` or
:meth:`Storage.read_ranges`, so this file is where a pruned sample's bytes are *not*
read. Local files are read with ``os.pread`` on a per-process file-descriptor cache.
Object storage goes through fsspec (s3fs for ``s3://``; chained URLs such as
``simplecache::s3://bucket/prefix`` work), and range reads of ``s3://`` go through
obstore when it is installed (``backend="auto"``).

Clients are made lazily, once per process and per (URL, options), and reused by every
:class:`Storage` of that process, so a worker that receives a fresh copy of the dataset
keeps its connections (a client is never used across ``fork``: s3fs and obstore break
after it). s3fs's and botocore's own retries are turned off: :mod:`shardprune.retry` is
the one retry layer, so one attempt there is one HTTP request.

A :class:`Storage` pickles as its URL and options only; live handles never travel.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, Callable, TypeVar

from shardprune import objstore
from shardprune.costmodel import REMOTE, CostModel
from shardprune.errors import ConfigError, DatasetNotFoundError, FetchError
from shardprune.retry import RetryPolicy, call_with_retry, log
from shardprune.validate import check_choice, check_int

T = TypeVar("T")

BACKENDS = ("auto", "fsspec", "obstore")
#: Range requests in flight per process in :meth:`Storage.read_ranges`, by default.
DEFAULT_MAX_IN_FLIGHT = 16
#: Ranges per obstore ``get_ranges`` call (it runs a call's requests at once), and the
#: size from which a range is read by a call of its own.
OBSTORE_BATCH = 10
BATCH_BELOW = 256 * 1024
#: Per-process clients: (pid, kind, URL, options) -> client. Keyed by pid so that a
#: forked child never uses its parent's.
_CLIENTS: dict[tuple[int, str, str, str], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(kind: str, url: str, options: dict[str, Any], make: Callable[[], T]) -> T:
    key = (os.getpid(), kind, url, json.dumps(options, sort_keys=True, default=repr))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            if any(k[0] != key[0] for k in _CLIENTS):
                # Inherited across fork: the parent's clients are not ours to use.
                _CLIENTS.clear()
            client = _CLIENTS[key] = make()
        return client


def _s3_client_options(protocol: str, options: dict[str, Any], max_in_flight: int) -> dict[str, Any]:
    """``options`` with botocore's retries off for s3 (s3fs's are set on the instance) and
    a connection pool as large as the requests in flight (botocore's default is 10)."""
    if protocol not in ("s3", "s3a"):
        return options
    out = dict(options)
    config = dict(out.get("config_kwargs") or {})
    config["retries"] = {"total_max_attempts": 1, "mode": "standard"}
    config.setdefault("max_pool_connections", max(10, max_in_flight))
    out["config_kwargs"] = config
    return out


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc``), else by a set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Storage:
    """A root location and the byte operations shardprune needs on files below it.

    Args:
        url: A local path (``/data/ds``, ``file:///data/ds``) or an fsspec URL
            (``s3://bucket/prefix``, or a chain such as ``simplecache::s3://bucket/prefix``).
        storage_options: Passed to fsspec for remote URLs, e.g.
            ``{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}`` (for a chain,
            keyed by protocol as fsspec expects: ``{"s3": {...}}``).
        retry: The retry policy of every request (default :class:`RetryPolicy()`: 6
            attempts within 25 s, backoff from 0.1 s with jitter, 4x for throttling).
        max_in_flight: Range requests in flight at once in :meth:`read_ranges` (default 16,
            1..256). Object storage needs many: each request pays a round trip.
        backend: Range reads of ``s3://`` through ``"obstore"`` (an optional extra),
            ``"fsspec"`` (s3fs), or ``"auto"`` (default: obstore when installed and it
            understands the options, else s3fs). Writes and listings always use fsspec.
        cost: Request latency and per-connection bandwidth, for the I/O planner (default:
            :data:`shardprune.costmodel.REMOTE`, 20 ms and 50 MB/s, for remote URLs; local
            storage has none).
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        *,
        retry: RetryPolicy | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        backend: str = "auto",
        cost: CostModel | None = None,
    ) -> None:
        url = os.fspath(url)
        if not url:
            raise ConfigError("dataset url is empty; pass a local path or an s3://bucket/prefix URL")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry={retry!r} must be a shardprune.retry.RetryPolicy or None")
        self.retry = retry or RetryPolicy()
        self.max_in_flight = check_int("max_in_flight", max_in_flight, 1, 256, fix="pass e.g. max_in_flight=16")
        self.backend = check_choice("backend", backend, BACKENDS)
        if cost is not None and not isinstance(cost, CostModel):
            raise ConfigError(f"cost={cost!r} must be a shardprune.costmodel.CostModel or None")
        self._cost = cost
        if url.startswith("file://"):
            url = url[len("file://") :]
        target = url.rsplit("::", 1)[-1]
        self.protocol = target.split("://", 1)[0] if "://" in target else "file"
        self.chained = "::" in url
        self.root = os.path.abspath(url) if self.protocol == "file" and not self.chained else url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        if self.backend == "obstore" and not (objstore.available() and objstore.supports(self.root, self.storage_options)):
            raise ConfigError(
                f"backend='obstore' cannot read {self.root!r} with options {sorted(self.storage_options)}: it needs "
                "pip install 'shardprune[obstore]', an s3:// URL (no chain) and only key/secret/token/anon/"
                "client_kwargs options; pass backend='auto' or 'fsspec'"
            )
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # -- pickling: URL and options only ------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "chained": self.chained,
            "root": self.root,
            "storage_options": self.storage_options,
            "retry": self.retry,
            "max_in_flight": self.max_in_flight,
            "backend": self.backend,
            "_cost": self._cost,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._fds = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file" and not self.chained

    @property
    def url(self) -> str:
        return self.root

    @property
    def cost(self) -> CostModel | None:
        """The planner's cost model: the one given, :data:`REMOTE` for remote URLs, None locally."""
        if self._cost is not None:
            return self._cost
        return None if self.is_local else REMOTE

    def path(self, rel: str) -> str:
        """The full path or URL of ``rel`` below the root."""
        if not rel:
            return self.root
        if self.is_local:
            return os.path.join(self.root, rel)
        return f"{self.root}/{rel}"

    def _check_pid(self) -> None:
        pid = os.getpid()
        if pid != self._pid:
            # Inherited across fork: the parent's descriptors are not ours to use.
            self._fds = {}
            self._lock = threading.Lock()
            self._pid = pid

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of this process (remote URLs only), with its retries off."""
        return self._fs_and_base()[0]

    def _fs_path(self, rel: str) -> str:
        """``rel`` as a path of :attr:`fs` (a chain's filesystem takes the inner path)."""
        base = self._fs_and_base()[1]
        return f"{base}/{rel}" if rel else base

    def _fs_and_base(self) -> tuple[Any, str]:
        key = dict(self.storage_options, __max_in_flight=self.max_in_flight)
        return _client("fsspec", self.root, key, self._make_fs)

    def _make_fs(self) -> tuple[Any, str]:
        try:
            import fsspec
            from fsspec.core import url_to_fs
        except ImportError as exc:  # pragma: no cover - fsspec is a core dependency
            raise ConfigError("reading remote datasets needs fsspec: pip install 'shardprune[s3]'") from exc
        options = self.storage_options
        if self.chained:
            # A chain's options are keyed by protocol; the innermost one is the object store.
            options = dict(options)
            inner = dict(options.get(self.protocol) or {})
            options[self.protocol] = _s3_client_options(self.protocol, inner, self.max_in_flight)
        else:
            options = _s3_client_options(self.protocol, options, self.max_in_flight)
        try:
            if self.chained:
                fs, base = url_to_fs(self.root, **options)
            else:
                fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **options)
                base = self.root
        except ImportError as exc:
            raise ConfigError(
                f"protocol {self.protocol!r} needs an extra package; for s3:// run pip install 'shardprune[s3]'"
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"cannot open {self.root!r}: {exc}; check the URL and storage_options") from exc
        # s3fs retries inside each call; one layer of retries (ours) counts the requests.
        for layer in (fs, getattr(fs, "fs", None)):
            if layer is not None and hasattr(layer, "retries"):
                layer.retries = 1
        return fs, str(base).rstrip("/")

    def _reader(self) -> objstore.ObstoreReader | None:
        if self.backend == "fsspec" or self.is_local:
            return None
        if self.backend == "auto" and not (objstore.available() and objstore.supports(self.root, self.storage_options)):
            return None
        return _client("obstore", self.root, self.storage_options,
                       lambda: objstore.ObstoreReader(self.root, self.storage_options))

    @staticmethod
    def _pool(n: int, kind: str = "io") -> ThreadPoolExecutor:
        return _client("pool", kind, {"n": n}, lambda: ThreadPoolExecutor(n, thread_name_prefix=f"shardprune-{kind}"))

    def _fd(self, rel: str) -> int:
        self._check_pid()
        fd = self._fds.get(rel)
        if fd is None:
            with self._lock:
                fd = self._fds.get(rel)
                if fd is None:
                    fd = os.open(self.path(rel), os.O_RDONLY)
                    self._fds[rel] = fd
        return fd

    def close(self) -> None:
        """Close cached file descriptors of this process."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = {}

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(self.retry, what, fn)

    # -- reads ------------------------------------------------------------------------
    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of ``rel`` starting at ``offset``, retrying transient faults.

        Raises:
            FetchError: after the last retry, naming the URL, the byte range and the attempts.
            FileNotFoundError: if the file does not exist.
        """
        if length == 0:
            return b""
        what = f"reading {self.path(rel)} bytes [{offset}, {offset + length})"
        if self.is_local:
            data = self._retry(what, lambda: os.pread(self._fd(rel), length, offset))
        else:
            reader = self._reader()
            if reader is not None:
                data = self._retry(what, lambda: reader.read(rel, offset, length))
            else:
                data = self._retry(
                    what, lambda: self.fs.cat_file(self._fs_path(rel), start=offset, end=offset + length)
                )
        if len(data) < length:
            raise FetchError(f"{what}: got {len(data)} bytes, the file is shorter than the manifest says")
        if len(data) > length:
            raise FetchError(f"{what}: got {len(data)} bytes; the server ignored the Range header")
        return bytes(data)

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]], max_in_flight: int | None = None) -> list[bytes]:
        """Read several ``(rel, offset, length)`` ranges, many requests in flight at once.

        Each range is one request with its own retries (:meth:`read_range`); the results
        come back in the order of ``ranges``. Local files are read one after another
        (a system call does not wait on a round trip).

        Args:
            ranges: The ranges to read.
            max_in_flight: Requests in flight at once (default: the storage's
                ``max_in_flight``; 1..256).
        """
        n = self.max_in_flight if max_in_flight is None else check_int("max_in_flight", max_in_flight, 1, 256)
        if len(ranges) <= 1 or self.is_local or n == 1:
            return [self.read_range(*r) for r in ranges]
        reader = self._reader()
        if reader is None:
            return list(self._pool(n).map(lambda r: self.read_range(*r), ranges))
        # obstore: a range of at least BATCH_BELOW bytes is one call of its own; smaller ranges
        # of one object go OBSTORE_BATCH to a call (obstore runs a call's requests at once),
        # n // OBSTORE_BATCH calls at a time: about half the client CPU per small request.
        out: list[bytes] = [b""] * len(ranges)
        large = [k for k, r in enumerate(ranges) if r[2] >= BATCH_BELOW]
        by_path: dict[str, list[int]] = {}
        for k, (rel, _, length) in enumerate(ranges):
            if length < BATCH_BELOW:
                by_path.setdefault(rel, []).append(k)
        batches = [m[i : i + OBSTORE_BATCH] for m in by_path.values() for i in range(0, len(m), OBSTORE_BATCH)]
        singles = self._pool(n).map(lambda k: self.read_range(*ranges[k]), large)
        grouped = self._pool(max(1, n // OBSTORE_BATCH), "batch").map(
            lambda m: self._read_batch(reader, ranges, m), batches
        )
        for k, data in zip(large, singles):
            out[k] = data
        for members, datas in zip(batches, grouped):
            for k, data in zip(members, datas):
                out[k] = data
        return out

    def _read_batch(
        self, reader: objstore.ObstoreReader, ranges: Sequence[tuple[str, int, int]], members: list[int]
    ) -> list[bytes]:
        """One obstore call for ``members`` (ranges of one object); on any failure each range
        is read again on its own under the retry policy, so a range costs at most
        ``attempts + 1`` requests."""
        rel = ranges[members[0]][0]
        offsets = [ranges[k][1] for k in members]
        lengths = [ranges[k][2] for k in members]
        try:
            datas = reader.read_many(rel, offsets, lengths)
        except Exception as exc:  # noqa: BLE001 - every range is retried (or fails) on its own below
            log.info("reading %d ranges of %s in one batch failed (%s); reading them one by one",
                     len(members), self.path(rel), exc)
            return [self.read_range(*ranges[k]) for k in members]
        for k, data in zip(members, datas):
            if len(data) != ranges[k][2]:
                return [self.read_range(*ranges[k]) for k in members]
        return datas

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole (small) file such as a header or manifest."""
        path = self.path(rel)
        if self.is_local:
            with open(path, "rb") as f:
                return f.read()
        return bytes(self._retry(f"reading {path}", lambda: self.fs.cat_file(self._fs_path(rel))))

    def exists(self, rel: str) -> bool:
        if self.is_local:
            return os.path.exists(self.path(rel))
        return bool(self._retry(f"checking {self.path(rel)}", lambda: self.fs.exists(self._fs_path(rel))))

    def size(self, rel: str) -> int:
        if self.is_local:
            return os.path.getsize(self.path(rel))
        return int(self._retry(f"sizing {self.path(rel)}", lambda: self.fs.size(self._fs_path(rel))))

    def open(self, rel: str, block_size: int = 8 << 20) -> IO[bytes]:
        """A read-only file object of ``rel`` for sequential scans (remote: readahead of
        ``block_size`` bytes per request). Its reads are not retried: use
        :meth:`read_range` for sample bytes."""
        if self.is_local:
            return open(self.path(rel), "rb")
        return self.fs.open(self._fs_path(rel), "rb", block_size=block_size, cache_type="readahead")

    def find(self, suffix: str = "") -> list[str]:
        """Paths of every file below the root whose name ends with ``suffix``, relative
        to the root, ``/``-separated, sorted; names starting with a dot (and hidden
        folders) are left out."""
        found: list[str] = []
        if self.is_local:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
                found.extend(f if rel_dir == "." else f"{rel_dir}/{f}" for f in filenames)
        else:
            base = self.fs._strip_protocol(self._fs_path("")).rstrip("/")
            paths = self._retry(f"listing {self.root}", lambda: self.fs.find(base))
            found = [str(p)[len(base) + 1 :] for p in paths if str(p).startswith(base + "/")]
        return sorted(
            f for f in found if f.endswith(suffix) and not any(part.startswith(".") for part in f.split("/"))
        )

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly below ``rel``, sorted."""
        if self.is_local:
            try:
                return sorted(os.listdir(self.path(rel)))
            except FileNotFoundError as exc:
                raise DatasetNotFoundError(f"no directory at {self.path(rel)}") from exc
        entries = self._retry(f"listing {self.path(rel)}", lambda: self.fs.ls(self._fs_path(rel), detail=False))
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    # -- writes -----------------------------------------------------------------------
    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see the old content or the new, never a part.

        Locally: a temporary file in the same directory, fsync, ``os.replace``.
        On object storage a single PUT is already atomic.
        """
        path = self.path(rel)
        if not self.is_local:
            self._retry(f"writing {path}", lambda: self.fs.pipe_file(self._fs_path(rel), data))
            return
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            # mkstemp creates 0600; a published dataset must be as readable as its shards.
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def put_file(self, local_path: str, rel: str) -> None:
        """Copy a finished local file to ``rel`` (atomic rename locally, one upload remotely)."""
        path = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            os.replace(local_path, path)
        else:
            self._retry(f"uploading {path}", lambda: self.fs.put_file(local_path, self._fs_path(rel)))

    def remove(self, rel: str) -> None:
        path = self.path(rel)
        if self.is_local:
            if os.path.isdir(path):
                import shutil

                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        elif self.fs.exists(self._fs_path(rel)):
            self.fs.rm(self._fs_path(rel), recursive=True)


def open_storage(
    url: str | os.PathLike[str] | Storage, storage_options: dict[str, Any] | None = None
) -> Storage:
    """Return ``url`` as a :class:`Storage` (a Storage passes through unchanged)."""
    if isinstance(url, Storage):
        return url
    return Storage(url, storage_options)
