"""Zarr shards: one inner chunk per sample, ranges from the shard index, decodable alone."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from shardprune.errors import DatasetError
from shardprune.format.zarrsample import decode_array
from shardprune.format.zarrwriter import read_shard_index, write_zarr_shard


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("dtype,shape", [("uint8", (4, 5, 3)), ("float32", (40,)), ("int64", (7,))])
def test_each_sample_decodes_from_its_range(tmp_path: Path, compression: str, dtype: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((23, *shape)) * 50).astype(dtype)
    x[5] = 0  # equal to the fill value: must still get its own bytes
    shard = write_zarr_shard(str(tmp_path), "shards/000000.zarr", "x", x, compression)
    assert shard.object_path == "shards/000000.zarr/x/c/" + "/".join(["0"] * (len(shape) + 1))
    data = (tmp_path / shard.object_path).read_bytes()
    assert shard.nbytes == len(data)
    spec = {"encoding": "array", "dtype": dtype, "shape": list(shape), "compression": compression}
    on_disk = zarr.open_group(str(tmp_path / "shards/000000.zarr"), mode="r")["x"]
    for i in range(len(x)):
        o, n = int(shard.offsets[i]), int(shard.lengths[i])
        chunk = data[o : o + n]
        assert zlib.crc32(chunk) & 0xFFFFFFFF == int(shard.crc32[i])
        got = decode_array(chunk, spec, "x", f"sample {i}")
        np.testing.assert_array_equal(got, x[i])
        np.testing.assert_array_equal(got, on_disk[i])


def test_same_input_same_bytes(tmp_path: Path) -> None:
    x = np.arange(600, dtype=np.int16).reshape(20, 30)
    a = write_zarr_shard(str(tmp_path / "a"), "s.zarr", "x", x, "zstd")
    b = write_zarr_shard(str(tmp_path / "b"), "s.zarr", "x", x, "zstd")
    assert (tmp_path / "a" / a.object_path).read_bytes() == (tmp_path / "b" / b.object_path).read_bytes()


def test_short_or_missing_index_is_reported() -> None:
    with pytest.raises(DatasetError, match="cannot hold an index"):
        read_shard_index(b"abc", 2, "shard")
    missing = np.full(4, 2**64 - 1, dtype="<u8").tobytes() + b"\0\0\0\0"
    with pytest.raises(DatasetError, match="unwritten"):
        read_shard_index(missing, 2, "shard")
