"""ShardedDataset: open, read by byte range, and refuse damaged data with shard, id and offset."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from shardprune.dataset import ShardedDataset, open_dataset
from shardprune.errors import CorruptSampleError, DatasetError, DatasetNotFoundError, FormatVersionError
from shardprune.format.header import HEADER_NAME, MANIFEST_NAME
from shardprune.format.writer import DatasetWriter
from shardprune.sources.base import ArraySource


def _write(out: Path, shard_format: str = "tar") -> ArraySource:
    rng = np.random.default_rng(1)
    src = ArraySource(rng.standard_normal((30, 9)).astype(np.float32), rng.integers(0, 5, 30), num_classes=5)
    DatasetWriter(out, shard_format=shard_format, max_samples=10, keep_order=True).write(src)
    return src


@pytest.mark.parametrize("shard_format", ["tar", "zarr"])
def test_read_every_sample(tmp_path: Path, shard_format: str) -> None:
    src = _write(tmp_path, shard_format)
    ds = open_dataset(tmp_path)
    assert len(ds) == 30 and ds.header.num_classes == 5
    for i in range(30):
        s = ds.read_sample(i)
        assert s["id"] == i and s["label"] == src.labels[i]
        if shard_format == "zarr":
            np.testing.assert_array_equal(s["x"], src.x[i])
        else:
            np.testing.assert_array_equal(np.load(io.BytesIO(s["npy"])), src.x[i])
    with pytest.raises(IndexError, match="outside 0..29"):
        ds.read_raw(30)


@pytest.mark.parametrize("shard_format", ["tar", "zarr"])
def test_corrupted_shard_names_shard_id_and_offset(tmp_path: Path, shard_format: str) -> None:
    _write(tmp_path, shard_format)
    ds = ShardedDataset(tmp_path)
    victim = 14
    shard = ds.header.shards[int(ds.manifest.shard[victim])]
    offset = int(ds.manifest.offset[victim])
    path = tmp_path / shard.path
    data = bytearray(path.read_bytes())
    data[offset + int(ds.manifest.length[victim]) - 1] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = ShardedDataset(tmp_path)
    with pytest.raises(CorruptSampleError) as info:
        fresh.read_sample(victim)
    message = str(info.value)
    assert shard.path in message
    assert re.search(rf"sample id {victim}\b", message)
    assert f"offset {offset}" in message
    assert "CRC32 mismatch" in message
    # Neighbours in the same shard still read fine.
    fresh.read_sample(victim - 1)
    fresh.read_sample(victim + 1)


def test_damaged_manifest_and_header(tmp_path: Path) -> None:
    _write(tmp_path)
    manifest = tmp_path / MANIFEST_NAME
    good = manifest.read_bytes()
    manifest.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(DatasetError, match="sha256"):
        ShardedDataset(tmp_path)
    manifest.write_bytes(good)
    header = tmp_path / HEADER_NAME
    doc = json.loads(header.read_text())
    doc["format_version"] = 999
    header.write_text(json.dumps(doc))
    with pytest.raises(FormatVersionError, match="format_version=999"):
        ShardedDataset(tmp_path)
    header.unlink()
    with pytest.raises(DatasetNotFoundError, match="shardprune.json is missing"):
        ShardedDataset(tmp_path)
