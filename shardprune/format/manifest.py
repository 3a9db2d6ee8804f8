"""The manifest: one row per sample, the per-sample byte index every read starts from.

Stored as an Arrow IPC file with zstd-compressed buffers: 16.9 MB for 1.3M rows, loaded
and parsed in a median of 73 ms (104 ms with the header and SHA-256 check) on this
project's shared 2-core machine under load (``benchmarks/RESULTS.md``).

Columns (all non-null):

=========  ======  ==========================================================
id         int64   dense sample id, row i holds id i
shard      int32   index into the header's shard list
offset     int64   byte offset of the sample's bytes in the shard file
length     int64   byte length of the sample's bytes
label      int64   class label, -1 where the dataset is unlabelled
crc32      uint32  zlib.crc32 of exactly those bytes
=========  ======  ==========================================================

After these, in name order, come the user's metadata columns (bool, int64, float64 or
string, nullable; see :mod:`shardprune.format.metadata`), which filters read without
touching a shard.

For tar shards a sample's bytes run from the header of its first member to the end
of the padded data of its last member, so one range read returns a self-contained
mini tar stream. For zarr shards they are the sample's inner chunk inside the zarr
shard object.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from shardprune.errors import ConfigError, DatasetError
from shardprune.format.metadata import Columns, to_column

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("label", pa.int64()),
        ("crc32", pa.uint32()),
    ]
)
NO_LABEL = -1


@dataclass(frozen=True)
class Manifest:
    """The manifest as numpy columns (read-only views), and the metadata as Arrow arrays."""

    id: np.ndarray
    shard: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    label: np.ndarray
    crc32: np.ndarray
    metadata: Columns = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.id.shape[0])

    @classmethod
    def from_columns(
        cls,
        shard: np.ndarray,
        offset: np.ndarray,
        length: np.ndarray,
        label: np.ndarray,
        crc32: np.ndarray,
        metadata: Columns | None = None,
    ) -> "Manifest":
        n = len(shard)
        metadata = metadata or {}
        cols = [np.asarray(c) for c in (shard, offset, length, label, crc32)]
        if any(len(c) != n for c in cols):
            raise DatasetError(f"manifest columns have different lengths: {[len(c) for c in cols]}")
        return cls(
            id=np.arange(n, dtype=np.int64),
            shard=cols[0].astype(np.int32),
            offset=cols[1].astype(np.int64),
            length=cols[2].astype(np.int64),
            label=cols[3].astype(np.int64),
            crc32=cols[4].astype(np.uint32),
            metadata={name: to_column(name, metadata[name], n) for name in sorted(metadata)},
        )

    def to_bytes(self) -> bytes:
        """Serialise deterministically (same rows, same bytes)."""
        schema = pa.schema(list(SCHEMA) + [pa.field(k, v.type) for k, v in sorted(self.metadata.items())])
        table = pa.table(
            {**{name: getattr(self, name) for name in SCHEMA.names}, **dict(sorted(self.metadata.items()))},
            schema=schema,
        )
        sink = io.BytesIO()
        options = pa.ipc.IpcWriteOptions(compression="zstd")
        with pa.ipc.new_file(sink, schema, options=options) as writer:
            writer.write_table(table, max_chunksize=1 << 20)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "manifest") -> "Manifest":
        try:
            table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{where} is not a readable Arrow IPC file ({exc}); re-convert the dataset") from exc
        fixed = pa.schema(list(table.schema)[: len(SCHEMA)])
        if not fixed.equals(SCHEMA):
            raise DatasetError(f"{where} has schema {table.schema}, expected {SCHEMA} then metadata columns")
        cols = {name: table.column(name).to_numpy() for name in SCHEMA.names}
        try:
            metadata = {
                name: to_column(name, table.column(name).combine_chunks(), table.num_rows)
                for name in table.schema.names[len(SCHEMA) :]
            }
        except ConfigError as exc:
            raise DatasetError(f"{where}: {exc}") from exc
        manifest = cls(**cols, metadata=metadata)
        if not np.array_equal(manifest.id, np.arange(len(manifest), dtype=np.int64)):
            raise DatasetError(f"{where}: ids are not dense 0..N-1 in row order")
        return manifest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
