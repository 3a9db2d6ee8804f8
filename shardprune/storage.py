"""Where bytes live: a local directory or an object-store prefix (``s3://bucket/prefix``).

Every byte shardprune reads goes through :meth:`Storage.read_range`, so this file is
where a pruned sample's bytes are *not* read. Local files are read with ``os.pread``
on a per-process file-descriptor cache; object storage goes through fsspec (s3fs),
with a client created lazily in each process so that a DataLoader worker never uses
a client built before ``fork`` (s3fs breaks after fork).

A :class:`Storage` pickles as its URL and options only; live handles never travel.
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
import threading
import time
from typing import Any, Callable, TypeVar

from shardprune.errors import ConfigError, DatasetNotFoundError, FetchError

T = TypeVar("T")

#: Exceptions worth retrying: connection resets, timeouts and 5xx answers surface
#: as these through aiohttp/botocore/s3fs.
_TRANSIENT_NAMES = frozenset(
    {
        "ClientConnectionError",
        "ClientOSError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ConnectionResetError",
        "ConnectionError",
        "TimeoutError",
        "EndpointConnectionError",
        "ReadTimeoutError",
        "IncompleteReadError",
        "ResponseStreamingError",
    }
)


#: errno values of transient failures. s3fs turns an S3 ``500 InternalError`` and ``503
#: SlowDown`` into ``OSError(EREMOTEIO / EBUSY, <the server's message>)``, without the
#: status code in the text.
_TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        getattr(errno, "EREMOTEIO", None),
        errno.EIO,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
    )
    if code is not None
)


def _is_transient(exc: BaseException, depth: int = 0) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if type(exc).__name__ in _TRANSIENT_NAMES:
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    text = str(exc)
    # Other HTTP errors arrive as OSError with the status or S3 error code in the message.
    if any(code in text for code in ("500", "502", "503", "504", "SlowDown", "InternalError", "internal error")):
        return True
    cause = exc.__cause__ or exc.__context__
    return cause is not None and depth < 4 and _is_transient(cause, depth + 1)


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
            (``s3://bucket/prefix``).
        storage_options: Passed to ``fsspec.filesystem`` for remote URLs, e.g.
            ``{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}``.
        retries: Attempts per read before :class:`FetchError` (default 5, range 1..100).
        backoff_s: First retry delay in seconds; doubles each retry, with jitter.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        *,
        retries: int = 5,
        backoff_s: float = 0.05,
    ) -> None:
        url = os.fspath(url)
        if not url:
            raise ConfigError("dataset url is empty; pass a local path or an s3://bucket/prefix URL")
        if not 1 <= retries <= 100:
            raise ConfigError(f"retries={retries} is outside 1..100; pass e.g. retries=5")
        if backoff_s < 0:
            raise ConfigError(f"backoff_s={backoff_s} must be >= 0")
        if url.startswith("file://"):
            url = url[len("file://") :]
        self.protocol = url.split("://", 1)[0] if "://" in url else "file"
        self.root = url.rstrip("/") if self.protocol != "file" else os.path.abspath(url)
        self.storage_options = dict(storage_options or {})
        self.retries = retries
        self.backoff_s = backoff_s
        self._pid = -1
        self._fs: Any = None
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    # -- pickling: URL and options only ------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "root": self.root,
            "storage_options": self.storage_options,
            "retries": self.retries,
            "backoff_s": self.backoff_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = -1
        self._fs = None
        self._fds = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def url(self) -> str:
        return self.root

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
            # Inherited across fork: the parent's descriptors and client are not ours to use.
            self._fds = {}
            self._fs = None
            self._lock = threading.Lock()
            self._pid = pid

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of this process (remote URLs only)."""
        self._check_pid()
        if self._fs is None:
            try:
                import fsspec
            except ImportError as exc:  # pragma: no cover - fsspec is a core dependency
                raise ConfigError("reading remote datasets needs fsspec: pip install 'shardprune[s3]'") from exc
            try:
                self._fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.storage_options)
            except ImportError as exc:
                raise ConfigError(
                    f"protocol {self.protocol!r} needs an extra package; for s3:// run pip install 'shardprune[s3]'"
                ) from exc
        return self._fs

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
        delay = self.backoff_s
        last: BaseException | None = None
        attempts = 0
        for attempt in range(self.retries):
            attempts = attempt + 1
            try:
                return fn()
            except BaseException as exc:  # noqa: BLE001 - classified below
                if not _is_transient(exc) or attempt == self.retries - 1:
                    if isinstance(exc, FileNotFoundError):
                        raise
                    last = exc
                    break
                last = exc
                time.sleep(delay * (1 + random.random()))
                delay *= 2
        raise FetchError(f"{what} failed after {attempts} attempt(s): {type(last).__name__}: {last}") from last

    # -- reads ------------------------------------------------------------------------
    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of ``rel`` starting at ``offset``, retrying transient faults.

        Raises:
            FetchError: after the last retry, naming the URL and the byte range.
            FileNotFoundError: if the file does not exist.
        """
        if length == 0:
            return b""
        what = f"reading {self.path(rel)} bytes [{offset}, {offset + length})"
        if self.is_local:
            data = self._retry(what, lambda: os.pread(self._fd(rel), length, offset))
        else:
            data = self._retry(what, lambda: self.fs.cat_file(self.path(rel), start=offset, end=offset + length))
        if len(data) != length:
            raise FetchError(f"{what}: got {len(data)} bytes, the file is shorter than the manifest says")
        return bytes(data)

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole (small) file such as a header or manifest."""
        path = self.path(rel)
        if self.is_local:
            with open(path, "rb") as f:
                return f.read()
        return bytes(self._retry(f"reading {path}", lambda: self.fs.cat_file(path)))

    def exists(self, rel: str) -> bool:
        if self.is_local:
            return os.path.exists(self.path(rel))
        return bool(self.fs.exists(self.path(rel)))

    def size(self, rel: str) -> int:
        if self.is_local:
            return os.path.getsize(self.path(rel))
        return int(self.fs.size(self.path(rel)))

    def listdir(self, rel: str = "") -> list[str]:
        """Names (not paths) directly below ``rel``, sorted."""
        if self.is_local:
            try:
                return sorted(os.listdir(self.path(rel)))
            except FileNotFoundError as exc:
                raise DatasetNotFoundError(f"no directory at {self.path(rel)}") from exc
        entries = self.fs.ls(self.path(rel), detail=False)
        return sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    # -- writes -----------------------------------------------------------------------
    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see the old content or the new, never a part.

        Locally: a temporary file in the same directory, fsync, ``os.replace``.
        On object storage a single PUT is already atomic.
        """
        path = self.path(rel)
        if not self.is_local:
            self._retry(f"writing {path}", lambda: self.fs.pipe_file(path, data))
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
            self._retry(f"uploading {path}", lambda: self.fs.put_file(local_path, path))

    def remove(self, rel: str) -> None:
        path = self.path(rel)
        if self.is_local:
            if os.path.isdir(path):
                import shutil

                shutil.rmtree(path)
            elif os.path.exists(path):
                os.unlink(path)
        elif self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def open_storage(
    url: str | os.PathLike[str] | Storage, storage_options: dict[str, Any] | None = None
) -> Storage:
    """Return ``url`` as a :class:`Storage` (a Storage passes through unchanged)."""
    if isinstance(url, Storage):
        return url
    return Storage(url, storage_options)
