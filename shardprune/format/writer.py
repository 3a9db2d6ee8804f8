"""Turn a :class:`~shardprune.sources.base.Source` into a dataset directory.

Steps: plan shard boundaries from the source's sample sizes (a pure function of the
input, so the output does not depend on ``workers``), write each shard in a worker
process into a staging directory, build the manifest, then publish: shards and
manifest first, the header last and atomically. A directory without a header is not a
dataset, so an interrupted run never leaves one that looks complete, and re-running the
same command cleans the leftovers and finishes the job.

Publishing over an existing complete dataset: if its manifest is byte-identical to the
new one nothing changes; otherwise :class:`OutputExistsError` unless ``overwrite``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from shardprune.errors import ConfigError, DatasetError, OutputExistsError, SourceError
from shardprune.format.header import HEADER_NAME, MANIFEST_NAME, SHARD_FORMATS, Header, ShardInfo
from shardprune.format.manifest import Manifest, sha256
from shardprune.format.metadata import Columns, MetadataFn, columns_from_rows, combine, merge
from shardprune.format.permute import ORDER_KEY, order_record, permuted
from shardprune.format.tarwriter import TarShardWriter, padded_size, sample_key
from shardprune.format.zarrsample import COMPRESSIONS
from shardprune.format.zarrwriter import write_zarr_shard
from shardprune.sources.base import ArraySource, Source
from shardprune.storage import Storage, open_storage
from shardprune.validate import check_bool, check_int

if TYPE_CHECKING:
    from shardprune.format.samplewriter import SampleWriter

#: Default shard size limit: large enough for efficient sequential reads, small enough
#: to spread over workers and ranks.
DEFAULT_MAX_BYTES = 256 * 2**20
STAGING_NAME = ".shardprune-staging"
SHARDS_DIR = "shards"
#: Entries of a dataset directory that a conversion owns and may replace.
OWN_ENTRIES = frozenset({HEADER_NAME, MANIFEST_NAME, SHARDS_DIR, STAGING_NAME})
#: Bytes a ``cls`` member takes in a tar (header block plus one data block).
_CLS_BYTES = padded_size(1)

Progress = Callable[[int], None]


def plan_shards(sizes: np.ndarray, max_bytes: int | None, max_samples: int | None) -> list[tuple[int, int]]:
    """Cut samples ``0..N-1`` into contiguous ``(start, stop)`` shards.

    A shard closes before a sample that would take it past ``max_bytes`` or
    ``max_samples``; a sample larger than ``max_bytes`` gets a shard of its own.
    """
    n = len(sizes)
    bounds: list[tuple[int, int]] = []
    start = 0
    total = 0
    for i, size in enumerate(sizes.tolist()):
        count = i - start
        if count and (
            (max_samples is not None and count >= max_samples) or (max_bytes is not None and total + size > max_bytes)
        ):
            bounds.append((start, i))
            start, total = i, 0
        total += size
    if n:
        bounds.append((start, n))
    return bounds


@dataclass(frozen=True)
class ShardResult:
    """What one written shard contributes to the header and the manifest."""

    index: int
    info: ShardInfo
    offsets: np.ndarray
    lengths: np.ndarray
    crc32: np.ndarray
    exts: frozenset[str]
    metadata: Columns = field(default_factory=dict)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_and_rename(tmp: str, final: str) -> None:
    """Make a written shard (a file, or a zarr group directory) durable, then give it its final name."""
    if os.path.isdir(tmp):
        for dirpath, _, filenames in os.walk(tmp):
            for name in filenames:
                _fsync(os.path.join(dirpath, name))
    else:
        _fsync(tmp)
    os.replace(tmp, final)


def write_shard(
    source: Source,
    index: int,
    start: int,
    stop: int,
    shard_format: str,
    compression: str,
    root: str,
    progress: Progress | None = None,
    finish: Callable[[str, str], None] = _sync_and_rename,
    metadata: MetadataFn | None = None,
) -> ShardResult:
    """Write samples ``start..stop-1`` as shard ``index`` below the local directory ``root``.

    A shard is written under a temporary name and handed to ``finish(tmp, final)``,
    which by default fsyncs and renames it; the single-process writer passes one that
    does this on a background thread, so the disk flushes one shard while the next is
    being written. ``metadata(sample_id, fields)`` is called on each sample's fields
    (tar: ``{extension: bytes}``; zarr: ``{name: ndarray}``) for its metadata columns.
    """
    os.makedirs(os.path.join(root, SHARDS_DIR), exist_ok=True)
    if shard_format == "zarr":
        if not isinstance(source, ArraySource):
            raise ConfigError("zarr shards need an array source")
        group = f"{SHARDS_DIR}/{index:06d}.zarr"
        tmp_group = f"{SHARDS_DIR}/.tmp-{index:06d}.zarr"
        rows = source.array_range(start, stop)
        rows_meta = (
            [] if metadata is None else [_meta(metadata, start + j, {source.name: r}) for j, r in enumerate(rows)]
        )
        shard = write_zarr_shard(root, tmp_group, source.name, rows, compression)
        finish(os.path.join(root, tmp_group), os.path.join(root, group))
        if progress is not None:
            progress(stop - start)
        object_path = group + shard.object_path[len(tmp_group) :]
        info = ShardInfo(path=object_path, bytes=shard.nbytes, samples=stop - start)
        columns = columns_from_rows(rows_meta, len(rows_meta))
        return ShardResult(index, info, shard.offsets, shard.lengths, shard.crc32, frozenset(), columns)
    rel = f"{SHARDS_DIR}/{index:06d}.tar"
    final = os.path.join(root, rel)
    tmp = os.path.join(root, SHARDS_DIR, f".tmp-{index:06d}.tar")
    n = stop - start
    offsets = np.empty(n, dtype=np.int64)
    lengths = np.empty(n, dtype=np.int64)
    crcs = np.empty(n, dtype=np.uint32)
    exts: set[str] = set()
    labels = source.labels
    meta: list[dict[str, Any]] = []
    j = -1
    with open(tmp, "wb", buffering=1 << 20) as f:
        tw = TarShardWriter(f)
        for j, fields in enumerate(source.tar_samples(start, stop)):
            sample_id = start + j
            exts.update(fields)
            if metadata is not None:
                meta.append(_meta(metadata, sample_id, fields))
            if source.labelled:
                fields = {**fields, "cls": str(int(labels[sample_id])).encode("ascii")}
            offsets[j], lengths[j], crcs[j] = tw.add(sample_key(sample_id), fields)
            if progress is not None and j % 64 == 63:
                progress(64)
        if j + 1 != n:
            raise SourceError(f"source yielded {j + 1} samples for ids {start}..{stop - 1}; this is a source bug")
        size = tw.finish()
    finish(tmp, final)
    if progress is not None and n % 64:
        progress(n % 64)
    info = ShardInfo(path=rel, bytes=size, samples=n)
    return ShardResult(index, info, offsets, lengths, crcs, frozenset(exts), columns_from_rows(meta, len(meta)))


def _meta(fn: MetadataFn, sample_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    row = fn(sample_id, fields)
    if not isinstance(row, dict):
        raise SourceError(
            f"metadata function returned {type(row).__name__} for sample {sample_id}; it must return a dict "
            "{column: bool | int | float | str | None}"
        )
    return row


_WORKER: dict[str, Any] = {}


def _init_worker(
    source: Source, shard_format: str, compression: str, root: str, metadata: MetadataFn | None = None
) -> None:
    # Ctrl-C reaches the whole process group; the parent handles it (cancels the queued
    # shards, waits for the running ones, removes the staging directory). A worker that
    # raised KeyboardInterrupt itself would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(source=source, shard_format=shard_format, compression=compression, root=root, metadata=metadata)


def _run_job(job: tuple[int, int, int]) -> ShardResult:
    index, start, stop = job
    return write_shard(
        _WORKER["source"],
        index,
        start,
        stop,
        _WORKER["shard_format"],
        _WORKER["compression"],
        _WORKER["root"],
        metadata=_WORKER["metadata"],
    )


def _mp_context() -> Any:
    # Not fork: the parent may run zarr's event-loop thread, which a forked child would inherit dead.
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def existing_dataset(storage: Storage, new: Header, overwrite: bool) -> Header | None:
    """Decide what to do with a dataset already at ``storage``.

    Returns:
        The existing header when its manifest is identical to ``new``'s (nothing to
        write), else None (the caller may replace it).

    Raises:
        OutputExistsError: a different or unreadable dataset is there and ``overwrite`` is off.
    """
    if not storage.exists(HEADER_NAME):
        return None
    try:
        old = Header.from_json(storage.read_bytes(HEADER_NAME), storage.path(HEADER_NAME))
    except DatasetError:
        if overwrite:
            return None
        raise OutputExistsError(
            f"{storage.path(HEADER_NAME)} exists but is not a readable header; pass --overwrite to replace it"
        ) from None
    if old.manifest_sha256 == new.manifest_sha256 and old.shard_format == new.shard_format:
        return old
    if not overwrite:
        raise OutputExistsError(
            f"{storage.url} already holds a different dataset ({old.num_samples} samples, manifest "
            f"{old.manifest_sha256[:12]}, new one {new.manifest_sha256[:12]}); "
            "choose another output or pass --overwrite"
        )
    return None


class DatasetWriter:
    """Write a source as a shardprune dataset.

    Args:
        output: Local directory or ``s3://bucket/prefix`` (staged locally, then uploaded).
        shard_format: ``"tar"`` (default) or ``"zarr"`` (array sources only).
        max_bytes: Roll to a new shard before this many bytes (default 256 MiB; None: no limit).
        max_samples: Roll to a new shard after this many samples (default None: no limit).
        workers: Processes writing shards in parallel (default 1, range 1..256). Output
            bytes are identical for every value.
        compression: Zarr inner-chunk compression, ``"none"`` (default) or ``"zstd"``.
        overwrite: Replace an existing, different dataset at ``output`` (default False).
        storage_options: fsspec options for a remote ``output``.
        metadata: ``fn(sample_id, fields) -> {column: value}`` run on every sample while
            it is written (picklable when ``workers > 1``), for manifest metadata columns
            that filters read without reading shards (default None). Added to the
            source's own columns (``ParquetSource(metadata_columns=...)``, ...).
        keep_order: Write samples in input order (default False: a seeded permutation of
            the whole input, see :mod:`shardprune.format.permute`; recorded in the header).
        shuffle_seed: Seed of that permutation (default 0).
    """

    def __init__(
        self,
        output: str | os.PathLike[str] | Storage,
        *,
        shard_format: str = "tar",
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        max_samples: int | None = None,
        workers: int = 1,
        compression: str = "none",
        overwrite: bool = False,
        storage_options: dict[str, Any] | None = None,
        metadata: MetadataFn | None = None,
        keep_order: bool = False,
        shuffle_seed: int = 0,
    ) -> None:
        if metadata is not None and not callable(metadata):
            raise ConfigError(f"metadata={metadata!r} must be a callable fn(sample_id, fields) -> dict, or None")
        self.shuffle_seed: int | None = (
            None if check_bool("keep_order", keep_order) else check_int("shuffle_seed", shuffle_seed, 0, 2**128 - 1)
        )
        if shard_format not in SHARD_FORMATS:
            raise ConfigError(f"shard_format={shard_format!r} is not one of {SHARD_FORMATS}")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"max_bytes={max_bytes} must be >= 1 (or None for no limit)")
        if max_samples is not None and max_samples < 1:
            raise ConfigError(f"max_samples={max_samples} must be >= 1 (or None for no limit)")
        if not 1 <= workers <= 256:
            raise ConfigError(f"workers={workers} is outside 1..256")
        if compression not in COMPRESSIONS:
            raise ConfigError(f"compression={compression!r} is not one of {COMPRESSIONS}")
        if shard_format == "tar" and compression != "none":
            raise ConfigError("compression applies to zarr shards only; tar members are stored as given")
        self.storage = open_storage(output, storage_options)
        self.shard_format = shard_format
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.workers = workers
        self.compression = compression
        self.overwrite = overwrite
        self.metadata = metadata

    def _sizes(self, source: Source) -> np.ndarray:
        if self.shard_format == "zarr":
            if not isinstance(source, ArraySource):
                raise ConfigError(
                    f"zarr shards hold fixed-shape arrays; a {source.kind} source gives encoded files, "
                    "use --format tar"
                )
            nbytes = int(np.prod(source.sample_shape, dtype=np.int64)) * source.x.dtype.itemsize
            return np.full(len(source), nbytes, dtype=np.int64)
        return source.tar_sizes() + (_CLS_BYTES if source.labelled else 0)

    def write(self, source: Source, progress: Progress | None = None) -> Header:
        """Convert ``source``; return the header of the published dataset.

        Args:
            source: What to convert.
            progress: Called with the number of samples finished since the last call.

        Raises:
            SourceError: the input is unusable (nothing is published).
            OutputExistsError: ``output`` holds a different dataset and ``overwrite`` is off.
        """
        if len(source) == 0:
            raise SourceError(f"the {source.kind} source has no samples; nothing to convert")
        source = permuted(source, self.shuffle_seed)
        jobs = [
            (i, start, stop)
            for i, (start, stop) in enumerate(plan_shards(self._sizes(source), self.max_bytes, self.max_samples))
        ]
        staging = self._prepare()
        try:
            results = self._write_shards(source, jobs, staging, progress)
            header, manifest_bytes = self._assemble(source, results)
            return self._publish(staging, header, manifest_bytes)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def samples(self, *, num_classes: int | None = None) -> "SampleWriter":
        """A :class:`~shardprune.format.samplewriter.SampleWriter` for writing samples one by one.

        ``with DatasetWriter(out).samples() as sink: sink.write({"jpg": data, "label": 3})``
        publishes the dataset when the block ends (nothing if it raises). Tar shards only;
        ``workers`` does not apply (the caller's loop produces the samples).

        Args:
            num_classes: Labels must lie in ``0..num_classes-1`` (default: max label + 1).
        """
        from shardprune.format.samplewriter import SampleWriter

        return SampleWriter(self, num_classes=num_classes)

    def _write_shards(
        self, source: Source, jobs: list[tuple[int, int, int]], staging: str, progress: Progress | None
    ) -> list[ShardResult]:
        workers = min(self.workers, len(jobs))
        if workers == 1:
            return self._write_serial(source, jobs, staging, progress)
        results: list[ShardResult] = []
        pool = ProcessPoolExecutor(
            workers,
            mp_context=_mp_context(),
            initializer=_init_worker,
            initargs=(source, self.shard_format, self.compression, staging, self.metadata),
        )
        try:
            futures: list[Future[ShardResult]] = [pool.submit(_run_job, job) for job in jobs]
            for fut in as_completed(futures):
                result = fut.result()
                results.append(result)
                if progress is not None:
                    progress(result.info.samples)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return sorted(results, key=lambda r: r.index)

    def _write_serial(
        self, source: Source, jobs: list[tuple[int, int, int]], staging: str, progress: Progress | None
    ) -> list[ShardResult]:
        # fsync releases the GIL: shard k goes to disk while shard k+1 is being written.
        with ThreadPoolExecutor(1, thread_name_prefix="shardprune-fsync") as syncer:
            pending: list[Future[None]] = []

            def finish(tmp: str, final: str) -> None:
                pending.append(syncer.submit(_sync_and_rename, tmp, final))

            results = [
                write_shard(
                    source, i, a, b, self.shard_format, self.compression, staging, progress, finish, self.metadata
                )
                for i, a, b in jobs
            ]
            for fut in pending:
                fut.result()
        return results

    def _assemble(self, source: Source, results: list[ShardResult]) -> tuple[Header, bytes]:
        manifest = Manifest.from_columns(
            shard=np.concatenate([np.full(r.info.samples, r.index, dtype=np.int32) for r in results]),
            offset=np.concatenate([r.offsets for r in results]),
            length=np.concatenate([r.lengths for r in results]),
            label=source.labels,
            crc32=np.concatenate([r.crc32 for r in results]),
            metadata=combine(
                len(source), source.metadata_columns(), merge([(r.info.samples, r.metadata) for r in results])
            ),
        )
        manifest_bytes = manifest.to_bytes()
        if self.shard_format == "zarr" and isinstance(source, ArraySource):
            fields = source.zarr_field(self.compression)
        else:
            fields = source.tar_fields(set().union(*(r.exts for r in results)))
            if source.labelled:
                fields["cls"] = {"encoding": "int"}
        header = Header(
            num_samples=len(source),
            shard_format=self.shard_format,
            fields=fields,
            shards=tuple(r.info for r in results),
            manifest_sha256=sha256(manifest_bytes),
            num_classes=source.num_classes,
            source={**source.description, ORDER_KEY: order_record(self.shuffle_seed)},
        )
        return header, manifest_bytes

    # -- staging and publishing ---------------------------------------------------------
    def _prepare(self) -> str:
        """Check the output, clear leftovers of an interrupted run, return a fresh staging dir."""
        st = self.storage
        if not st.is_local:
            # Touch the store before converting anything, so a wrong endpoint or missing
            # credentials fail in seconds rather than after the last shard.
            st.exists(HEADER_NAME)
            return tempfile.mkdtemp(prefix="shardprune-staging-")
        if os.path.exists(st.root) and not os.path.isdir(st.root):
            raise OutputExistsError(f"output {st.root!r} is a file; pass a directory path")
        os.makedirs(st.root, exist_ok=True)
        entries = set(os.listdir(st.root))
        foreign = sorted(entries - OWN_ENTRIES)
        if foreign and not self.overwrite:
            raise OutputExistsError(
                f"output {st.root!r} holds {len(foreign)} entries that are not a shardprune dataset "
                f"(e.g. {foreign[0]!r}); choose an empty directory or pass --overwrite"
            )
        st.remove(STAGING_NAME)
        if HEADER_NAME not in entries:
            # No header: whatever is here is the leftover of an interrupted run.
            st.remove(MANIFEST_NAME)
            st.remove(SHARDS_DIR)
        staging = st.path(STAGING_NAME)
        os.makedirs(staging)
        return staging

    def _publish(self, staging: str, header: Header, manifest_bytes: bytes) -> Header:
        st = self.storage
        existing = existing_dataset(st, header, self.overwrite)
        if existing is not None:
            return existing
        # Header first: from here on the old dataset no longer looks complete.
        st.remove(HEADER_NAME)
        st.remove(MANIFEST_NAME)
        st.remove(SHARDS_DIR)
        if st.is_local:
            os.replace(os.path.join(staging, SHARDS_DIR), st.path(SHARDS_DIR))
        else:
            shard_root = os.path.join(staging, SHARDS_DIR)
            for dirpath, _, filenames in sorted(os.walk(shard_root)):
                for name in sorted(filenames):
                    local = os.path.join(dirpath, name)
                    st.put_file(local, os.path.relpath(local, staging).replace(os.sep, "/"))
        st.write_bytes_atomic(MANIFEST_NAME, manifest_bytes)
        st.write_bytes_atomic(HEADER_NAME, header.to_json().encode("utf-8"))
        return header
