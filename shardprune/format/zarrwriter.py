"""Write one zarr shard: a zarr v3 group holding one array whose samples are inner chunks.

The array has shape ``(n, *sample_shape)``, one outer chunk (so one shard object
file) and the sharding codec with inner chunk ``(1, *sample_shape)``, so every sample
is its own encoded byte range. After zarr has written the shard object we read its
index (at the end of the object: ``(offset, nbytes)`` little-endian uint64 pairs per
inner chunk, then a crc32c) to learn each sample's range for the manifest.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardprune.errors import ConfigError, DatasetError
from shardprune.format.zarrsample import COMPRESSIONS

#: zarr's marker for an inner chunk that was never written.
_MISSING = np.uint64(2**64 - 1)
#: zstd level for ``compression="zstd"``; 3 is zstd's own default speed/ratio balance.
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class ZarrShard:
    """Where a written zarr shard's sample bytes are.

    Attributes:
        object_path: Path of the shard object file, relative to the directory passed
            to :func:`write_zarr_shard`'s ``root``.
        nbytes: Size of that file.
        offsets: Per-sample byte offset inside it.
        lengths: Per-sample byte length.
        crc32: Per-sample ``zlib.crc32`` of exactly those bytes.
    """

    object_path: str
    nbytes: int
    offsets: np.ndarray
    lengths: np.ndarray
    crc32: np.ndarray


def read_shard_index(data: bytes, num_chunks: int, where: str) -> np.ndarray:
    """Return the ``(num_chunks, 2)`` uint64 ``(offset, nbytes)`` table at the end of a shard object.

    Raises:
        DatasetError: the object is too short or an inner chunk is missing.
    """
    index_bytes = num_chunks * 16 + 4
    if len(data) < index_bytes:
        raise DatasetError(f"{where}: {len(data)} bytes cannot hold an index of {num_chunks} inner chunks")
    index = np.frombuffer(data[-index_bytes:-4], dtype="<u8").reshape(num_chunks, 2)
    missing = np.flatnonzero(index[:, 0] == _MISSING)
    if missing.size:
        raise DatasetError(f"{where}: zarr left inner chunk {int(missing[0])} unwritten; this is a writer bug")
    return index


def write_zarr_shard(root: str, rel_dir: str, name: str, array: np.ndarray, compression: str) -> ZarrShard:
    """Write ``array`` (samples along axis 0) as a zarr v3 group at ``root/rel_dir``.

    Args:
        root: Local directory that ``rel_dir`` and the returned path are relative to.
        rel_dir: The group directory, e.g. ``shards/000000.zarr``.
        name: The array (field) name inside the group.
        array: Samples stacked on axis 0; at least one sample.
        compression: ``"none"`` or ``"zstd"``.

    Raises:
        ConfigError: unknown compression or an empty array.
    """
    import zarr
    from zarr.codecs import ZstdCodec
    from zarr.storage import LocalStore

    if compression not in COMPRESSIONS:
        raise ConfigError(f"compression={compression!r} is not one of {COMPRESSIONS}")
    if array.ndim < 1 or array.shape[0] == 0:
        raise ConfigError(f"a zarr shard needs at least one sample, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    group = zarr.open_group(LocalStore(os.path.join(root, rel_dir)), mode="w", zarr_format=3)
    compressors: Any = None if compression == "none" else ZstdCodec(level=ZSTD_LEVEL)
    zarray = group.create_array(
        name,
        shape=array.shape,
        dtype=array.dtype,
        chunks=(1, *array.shape[1:]),
        shards=array.shape,
        compressors=compressors,
        fill_value=0,
        # Every sample must own a byte range, even one equal to the fill value.
        config={"write_empty_chunks": True},
    )
    zarray[...] = array
    object_path = "/".join([rel_dir, name, "c", *("0" for _ in array.shape)])
    with open(os.path.join(root, object_path), "rb") as f:
        data = f.read()
    index = read_shard_index(data, array.shape[0], os.path.join(root, object_path))
    offsets = index[:, 0].astype(np.int64)
    lengths = index[:, 1].astype(np.int64)
    view = memoryview(data)
    crc = np.fromiter(
        (zlib.crc32(view[o : o + n]) & 0xFFFFFFFF for o, n in zip(offsets.tolist(), lengths.tolist())),
        dtype=np.uint32,
        count=len(offsets),
    )
    return ZarrShard(object_path=object_path, nbytes=len(data), offsets=offsets, lengths=lengths, crc32=crc)
