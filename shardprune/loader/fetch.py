"""Fetch: execute a read unit's range requests, cut out samples, verify and decode them.

This is where the loader reads bytes, always through :meth:`Storage.read_range` (which
retries transient faults with backoff and raises :class:`~shardprune.errors.FetchError`
naming the URL and range after the last retry). Every sample's bytes are checked
against the manifest CRC32 before parsing, so corruption is reported with the shard,
sample id and offset (:class:`~shardprune.errors.CorruptSampleError`).

A :class:`UnitFetcher` reads units for the loader's pipeline (the ``ReadAhead`` node in the
training process, or the worker pool's processes). A fetch has two halves: :meth:`UnitFetcher.start`
reads a unit's bytes (its requests, or the local cache) on a background thread for object
storage, and :meth:`UnitFetcher.finish` verifies, decodes and packs them, so a reader cuts one
unit while the next ones' round trips are under way. The fetcher pickles as the dataset (URL
plus manifest arrays) and options, and opens its own file handles, object-store client and
thread pools lazily in each process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from shardprune.cache import RangeCache
from shardprune.dataset import ShardedDataset
from shardprune.errors import ConfigError, CorruptSampleError
from shardprune.loader.decode import Sample, Transform, decode_sample, select_fields
from shardprune.loader.failure import WorkerFailure
from shardprune.loader.ioplan import ReadUnit


#: Sample keys that survive a ``fields`` selection.
_ALWAYS = frozenset({"id", "label", "__key__"})
#: Environment variables that configure object-store clients (endpoint, keys, region,
#: profile). A forkserver worker inherits the forkserver's environment from when it
#: started, not the training process's current one, so the fetcher carries these along.
_STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_")


#: Units whose requests a reader has under way besides the one it decodes: their requests
#: share the process's ``io_threads`` request slots, so a unit with few requests (a pruned
#: one) does not leave the slots idle.
READ_AHEAD_UNITS = 2
_AHEAD_LOCK = threading.Lock()


class Reads(Protocol):
    """Requests of a unit under way: :meth:`UnitFetcher.start` returns one, :meth:`UnitFetcher.finish` takes it."""

    def result(self) -> UnitBytes: ...

    def cancel(self) -> bool: ...


class _Deferred:
    """Reads done when their result is asked for (local storage: a read is a system call)."""

    def __init__(self, read: Callable[[], UnitBytes]) -> None:
        self._read: Callable[[], UnitBytes] | None = read

    def result(self) -> UnitBytes:
        if self._read is None:
            raise RuntimeError("these reads were cancelled")
        return self._read()

    def cancel(self) -> bool:
        self._read = None
        return True


#: One packed value: (sample index, key, offset, nbytes, dtype or None for bytes, shape).
_Packed = tuple[int, str, int, int, str | None, tuple[int, ...]]


@dataclass
class UnitBytes:
    """The read half of a fetch: each sample's bytes in unit order, and what reading cost.

    Attributes:
        raws: The samples' bytes, in the unit's order.
        verified: Every one was already checked against the manifest CRC32 (the cache path).
        bytes_read, requests, gap_bytes: What went to storage.
        cache_hits, cache_bytes: Samples (and their bytes) served from the local cache.
    """

    raws: list[bytes]
    verified: bool
    bytes_read: int
    requests: int
    gap_bytes: int
    cache_hits: int = 0
    cache_bytes: int = 0


@dataclass
class UnitResult:
    """Samples of one read unit, by plan slot, and what reading them cost.

    Attributes:
        index: The unit's index.
        samples: ``(slot, sample)`` pairs in read order.
        bytes_read: Bytes requested from storage.
        requests: Range requests made.
        gap_bytes: Bytes read between samples and discarded.
        cache_hits: Samples served from the local cache (:mod:`shardprune.cache`).
        cache_bytes: Bytes of those samples.
        error: Set instead of samples when reading the unit failed in a worker process
            (the training process re-raises the original exception, see
            :mod:`shardprune.loader.failure`).

    Between processes: a worker calls :meth:`pack`, which moves every ``bytes`` value and
    numeric ndarray of the samples into one uint8 tensor; torch's process queues pass a
    tensor as a shared-memory handle instead of pickling its bytes through a pipe. The
    training process calls :meth:`unpack`, which restores the values (arrays as views of
    the shared buffer, bytes as copies).
    """

    index: int
    samples: list[tuple[int, Sample]] = field(default_factory=list)
    bytes_read: int = 0
    requests: int = 0
    gap_bytes: int = 0
    cache_hits: int = 0
    cache_bytes: int = 0
    packed: torch.Tensor | None = None
    packed_spec: list[_Packed] = field(default_factory=list)
    error: WorkerFailure | None = None

    def pack(self) -> None:
        """Move the samples' bytes and numeric arrays into :attr:`packed` (one buffer)."""
        spec: list[_Packed] = []
        pieces: list[np.ndarray] = []
        offset = 0
        for i, (_, sample) in enumerate(self.samples):
            for key, value in sample.items():
                if isinstance(value, bytes):
                    flat = np.frombuffer(value, dtype=np.uint8)
                    dtype: str | None = None
                    shape: tuple[int, ...] = ()
                elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size:
                    flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
                    dtype, shape = value.dtype.str, value.shape
                else:
                    continue
                spec.append((i, key, offset, flat.nbytes, dtype, shape))
                pieces.append(flat)
                offset += flat.nbytes
        if not spec:
            return
        buf = torch.empty(offset, dtype=torch.uint8)
        out = buf.numpy()
        for (_, _, start, n, _, _), flat in zip(spec, pieces):
            out[start : start + n] = flat
        for i, key, *_ in spec:
            self.samples[i][1][key] = None
        self.packed, self.packed_spec = buf, spec

    def unpack(self) -> None:
        """Undo :meth:`pack` (a no-op for a result that was not packed)."""
        if self.packed is None:
            return
        buf = self.packed.numpy()
        for i, key, start, n, dtype, shape in self.packed_spec:
            view = buf[start : start + n]
            self.samples[i][1][key] = view.tobytes() if dtype is None else view.view(np.dtype(dtype)).reshape(shape)
        self.packed, self.packed_spec = None, []


class UnitFetcher:
    """Callable that reads, verifies and decodes one :class:`ReadUnit`.

    Args:
        dataset: The dataset to read.
        decode: Decode fields (images to uint8 CHW arrays, ...); False keeps raw bytes.
        transform: Optional ``fn(sample) -> sample`` run after decoding.
        io_threads: Concurrent range requests per unit (>= 1). More than 1 helps object
            storage, where each request pays a round trip.
        fields: Field names to keep (others are dropped before decoding), or None for all.
            ``id``, ``label`` and ``__key__`` are always kept.
        pack: :meth:`UnitResult.pack` each result, for results that cross to another
            process (the loader sets it when it has worker processes).
        cache: A local cache of fetched samples (:mod:`shardprune.cache`), or None. Cached
            samples are served from it (after the CRC32 check), the others are read as
            sub-requests of the plan's requests and then cached.
    """

    def __init__(
        self,
        dataset: ShardedDataset,
        *,
        decode: bool = True,
        transform: Transform | None = None,
        io_threads: int = 1,
        fields: tuple[str, ...] | None = None,
        pack: bool = False,
        cache: RangeCache | None = None,
    ) -> None:
        if isinstance(io_threads, bool) or not isinstance(io_threads, int) or io_threads < 1:
            raise ConfigError(f"io_threads={io_threads!r} must be an int >= 1")
        if fields is not None:
            unknown = sorted(set(fields) - set(dataset.header.fields))
            if unknown or not fields:
                raise ConfigError(
                    f"fields={list(fields)} names unknown field(s) {unknown}; the dataset has "
                    f"{sorted(dataset.header.fields)} (pass fields=None for all)"
                )
        self.fields = None if fields is None else frozenset(fields)
        self.dataset = dataset
        self.decode = decode
        self.transform = transform
        self.io_threads = io_threads
        self.pack = pack
        self.cache = cache

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_ahead")}
        state["_env"] = {k: v for k, v in os.environ.items() if k.startswith(_STORAGE_ENV_PREFIXES)}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        env: dict[str, str] = state.pop("_env", {})
        self.__dict__.update(state)
        # In the worker: the sender's storage settings, so both read from the same place.
        for key in [k for k in os.environ if k.startswith(_STORAGE_ENV_PREFIXES) and k not in env]:
            del os.environ[key]
        os.environ.update(env)

    def read_unit(self, unit: ReadUnit) -> UnitBytes:
        """Each sample's bytes of ``unit``: its requests, up to ``io_threads`` in flight at
        once, or through the cache (:meth:`_read_cached`)."""
        if self.cache is not None:
            return self._read_cached(unit, self.cache)
        ds = self.dataset
        ranges = [
            (ds.shard_path(s), o, n)
            for s, o, n in zip(unit.shard.tolist(), unit.offset.tolist(), unit.length.tolist())
        ]
        datas = ds.storage.read_ranges(ranges, max_in_flight=self.io_threads)
        raws: list[bytes] = []
        first, starts, lengths = unit.first.tolist(), unit.starts.tolist(), unit.lengths.tolist()
        for r, data in enumerate(datas):
            view = memoryview(data)
            raws.extend(bytes(view[starts[k] : starts[k] + lengths[k]]) for k in range(first[r], first[r + 1]))
        return UnitBytes(raws, False, unit.nbytes, unit.requests, unit.gap_bytes)

    def _sample(self, i: int, raw: bytes, verify: bool = True) -> Sample:
        ds = self.dataset
        if verify:
            ds.verify(i, raw)
        sample = ds.decode(i, raw)
        if self.fields is not None:
            sample = select_fields(sample, self.fields, ds.where(i))
        if self.decode:
            sample = decode_sample(sample, ds.header.fields, ds.where(i))
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __call__(self, unit: ReadUnit) -> UnitResult:
        """Read, verify and decode ``unit`` (:meth:`start` then :meth:`finish`, on this thread)."""
        return self._guard(unit, lambda: self.read_unit(unit))

    def start(self, unit: ReadUnit) -> Reads:
        """Start reading ``unit``'s requests on a background thread (:meth:`finish` cuts them).

        A reader starts the next unit before it cuts and decodes the current one, so the
        next requests' round trips overlap that work instead of following it. Up to
        :data:`READ_AHEAD_UNITS` units are read at once; their requests share the process's
        ``io_threads`` slots (:meth:`Storage.read_ranges`), so at most ``io_threads`` are in flight.
        Local storage is not read ahead: its reads are system calls, which a second Python
        thread would only slow down by contending for the interpreter lock.
        """
        if self.dataset.storage.is_local:
            return _Deferred(lambda: self.read_unit(unit))
        with _AHEAD_LOCK:
            pool = self.__dict__.get("_ahead_pool")
            if pool is None or self.__dict__.get("_ahead_pid") != os.getpid():
                pool = ThreadPoolExecutor(READ_AHEAD_UNITS, thread_name_prefix="shardprune-readahead")
                self.__dict__["_ahead_pool"], self.__dict__["_ahead_pid"] = pool, os.getpid()
            return pool.submit(self.read_unit, unit)

    def close(self) -> None:
        """Drop the read-ahead units not started yet and let the thread go (started ones finish)."""
        with _AHEAD_LOCK:
            pool = self.__dict__.pop("_ahead_pool", None)
            if pool is not None and self.__dict__.pop("_ahead_pid", None) == os.getpid():
                pool.shutdown(wait=False, cancel_futures=True)

    def finish(self, unit: ReadUnit, reads: Reads) -> UnitResult:
        """The result of a unit whose reads :meth:`start` began (its error, if any, as :meth:`__call__` gives it)."""
        return self._guard(unit, reads.result)

    def _guard(self, unit: ReadUnit, read: Callable[[], UnitBytes]) -> UnitResult:
        if not self.pack:
            return self._fetch(unit, read())
        # In a worker process: the exception travels as a value, so the training process
        # re-raises it as it was (not torchdata's re-raise with the traceback in the message).
        try:
            return self._fetch(unit, read())
        except Exception as exc:  # noqa: BLE001 - every error is re-raised in the training process
            return UnitResult(index=unit.index, error=WorkerFailure.capture(exc))

    def _fetch(self, unit: ReadUnit, got: UnitBytes) -> UnitResult:
        result = UnitResult(
            index=unit.index,
            bytes_read=got.bytes_read,
            requests=got.requests,
            gap_bytes=got.gap_bytes,
            cache_hits=got.cache_hits,
            cache_bytes=got.cache_bytes,
        )
        verify = not got.verified
        for slot, i, raw in zip(unit.slots.tolist(), unit.ids.tolist(), got.raws):
            result.samples.append((slot, self._sample(i, raw, verify=verify)))
        if self.pack:
            result.pack()
        return result

    def _read_cached(self, unit: ReadUnit, cache: RangeCache) -> UnitBytes:
        """:meth:`read_unit` through the cache: hits from disk, misses as sub-requests, then cached.

        The misses of a request are read as its maximal runs of consecutive uncached
        samples (each run one request, the gaps inside it included), so the bytes asked
        of storage never exceed the plan's. Every sample is checked against the manifest
        CRC32 here (a bad cached copy is a miss), and the samples come out in the same
        order as without the cache.
        """
        ds = self.dataset
        result = UnitBytes([], True, 0, 0, 0)
        ids, lengths = unit.ids.tolist(), unit.lengths.tolist()
        per_request = np.diff(unit.first)
        offsets = (np.repeat(unit.offset, per_request) + unit.starts).tolist()
        shards = np.repeat(unit.shard, per_request).tolist()
        raws: list[bytes | None] = [None] * len(ids)
        runs: list[tuple[int, int]] = []  # [k, j) sample positions read as one request
        dropped: set[int] = set()  # shards whose cache failed the CRC check
        for r in range(unit.requests):
            a, b = int(unit.first[r]), int(unit.first[r + 1])
            shard = int(unit.shard[r])
            for k, raw in enumerate(cache.lookup(shard, offsets[a:b], lengths[a:b]), a):
                if raw is None:
                    continue
                try:
                    ds.verify(ids[k], raw)
                except CorruptSampleError:
                    cache.drop(shard)  # a bad cache is a miss, never an error or a wrong sample
                    dropped.add(shard)
                    continue
                raws[k] = raw
                result.cache_hits += 1
                result.cache_bytes += len(raw)
            k = a
            while k < b:
                if raws[k] is not None:
                    k += 1
                    continue
                j = k
                while j < b and raws[j] is None:
                    j += 1
                runs.append((k, j))
                k = j
        ranges = [
            (ds.shard_path(shards[k]), offsets[k], offsets[j - 1] + lengths[j - 1] - offsets[k]) for k, j in runs
        ]
        datas = ds.storage.read_ranges(ranges, max_in_flight=self.io_threads) if ranges else []
        fetched: dict[int, list[tuple[int, bytes]]] = {}
        for (k, j), data in zip(runs, datas):
            view = memoryview(data)
            for m in range(k, j):
                start = offsets[m] - offsets[k]
                raw = bytes(view[start : start + lengths[m]])
                ds.verify(ids[m], raw)
                raws[m] = raw
                fetched.setdefault(shards[m], []).append((offsets[m], raw))
            result.bytes_read += len(data)
            result.gap_bytes += len(data) - sum(lengths[k:j])
        result.requests = len(runs)
        # The good samples of a dropped shard go back with the fetched ones.
        for k, raw in enumerate(raws):
            if shards[k] in dropped and not any(a <= k < b for a, b in runs):
                assert raw is not None
                fetched.setdefault(shards[k], []).append((offsets[k], raw))
        for shard, items in fetched.items():
            cache.store(shard, items)
        for raw in raws:
            assert raw is not None
            result.raws.append(raw)
        return result
