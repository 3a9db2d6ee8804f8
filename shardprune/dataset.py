"""Open a shardprune dataset and read samples by their byte ranges.

These are the reading primitives the streaming loader builds on: the header, the
manifest, and :meth:`ShardedDataset.read_raw` / :meth:`ShardedDataset.decode`, which
check each sample's CRC32 and parse tar members or zarr inner chunks.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import numpy as np

from shardprune.errors import CorruptSampleError, DatasetError, DatasetNotFoundError
from shardprune.format.header import HEADER_NAME, MANIFEST_NAME, Header
from shardprune.format.manifest import Manifest, sha256
from shardprune.format.tarsample import parse_sample
from shardprune.format.zarrsample import decode_array
from shardprune.storage import Storage, open_storage

Sample = dict[str, Any]


class ShardedDataset:
    """A converted dataset: header, manifest and shards under one root.

    Args:
        url: Local directory or ``s3://bucket/prefix`` of the dataset.
        storage_options: fsspec options for remote URLs (endpoint, credentials).
        verify_manifest: Check the manifest's SHA-256 against the header (default True).

    The object pickles cheaply (storage URL plus the manifest arrays) and opens its own
    file handles or object-store client in each process that reads.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | Storage,
        storage_options: dict[str, Any] | None = None,
        *,
        verify_manifest: bool = True,
    ) -> None:
        self.storage = open_storage(url, storage_options)
        where = self.storage.path(HEADER_NAME)
        try:
            header_bytes = self.storage.read_bytes(HEADER_NAME)
        except FileNotFoundError as exc:
            raise DatasetNotFoundError(
                f"no shardprune dataset at {self.storage.url} ({HEADER_NAME} is missing); "
                "convert one with tools/make_shards.py, or finish an interrupted conversion by re-running it"
            ) from exc
        self.header = Header.from_json(header_bytes, where)
        manifest_bytes = self.storage.read_bytes(MANIFEST_NAME)
        if verify_manifest and sha256(manifest_bytes) != self.header.manifest_sha256:
            raise DatasetError(
                f"{self.storage.path(MANIFEST_NAME)} has sha256 {sha256(manifest_bytes)}, but the header "
                f"says {self.header.manifest_sha256}; the dataset is damaged, re-convert it"
            )
        self.manifest = Manifest.from_bytes(manifest_bytes, self.storage.path(MANIFEST_NAME))
        if len(self.manifest) != self.header.num_samples:
            raise DatasetError(
                f"manifest has {len(self.manifest)} rows, header says num_samples={self.header.num_samples}"
            )

    def __len__(self) -> int:
        return self.header.num_samples

    def __repr__(self) -> str:
        return f"ShardedDataset({self.storage.url!r}, samples={len(self)}, shards={len(self.header.shards)})"

    @property
    def fingerprint(self) -> str:
        return self.header.fingerprint

    @property
    def labels(self) -> np.ndarray:
        return self.manifest.label

    def shard_path(self, shard: int) -> str:
        return self.header.shards[shard].path

    def where(self, i: int) -> str:
        """Text naming shard, sample id and offset of sample ``i`` for error messages."""
        m = self.manifest
        return (
            f"shard {self.storage.path(self.shard_path(int(m.shard[i])))} sample id {i} "
            f"at offset {int(m.offset[i])} (length {int(m.length[i])})"
        )

    def _check_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample id {i} is outside 0..{len(self) - 1}")
        return i

    def verify(self, i: int, data: bytes) -> None:
        """Raise :class:`CorruptSampleError` unless ``data`` matches sample ``i``'s CRC32."""
        crc = zlib.crc32(data) & 0xFFFFFFFF
        expected = int(self.manifest.crc32[i])
        if crc != expected:
            raise CorruptSampleError(
                f"CRC32 mismatch in {self.where(i)}: read {crc:#010x}, manifest says {expected:#010x}; "
                "the shard is corrupt or was modified after conversion"
            )

    def read_raw(self, i: int) -> bytes:
        """Read sample ``i``'s bytes with one range request and verify them."""
        i = self._check_id(i)
        m = self.manifest
        data = self.storage.read_range(self.shard_path(int(m.shard[i])), int(m.offset[i]), int(m.length[i]))
        self.verify(i, data)
        return data

    def decode(self, i: int, data: bytes) -> Sample:
        """Split verified bytes into fields: ``{"id", "label", "__key__", field: value}``.

        Tar fields come back as the member's bytes under its extension; zarr fields as
        read-only numpy arrays. Decoding images is the loader's job.
        """
        sample: Sample = {"id": i, "label": int(self.manifest.label[i])}
        if self.header.shard_format == "tar":
            key, fields = parse_sample(data, self.where(i))
            sample["__key__"] = key
            sample.update(fields)
        else:
            (name, spec), = self.header.fields.items()
            sample[name] = decode_array(data, spec, name, self.where(i))
        return sample

    def read_sample(self, i: int) -> Sample:
        """Read, verify and split sample ``i``."""
        return self.decode(i, self.read_raw(i))


def open_dataset(
    url: str | os.PathLike[str] | Storage, storage_options: dict[str, Any] | None = None
) -> ShardedDataset:
    """Open the dataset at ``url``; see :class:`ShardedDataset`."""
    return ShardedDataset(url, storage_options)
