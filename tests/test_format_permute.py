"""The converter's default shuffle: a seeded permutation of the whole input, recorded in the header."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from shardprune.dataset import ShardedDataset
from shardprune.errors import ConfigError
from shardprune.format.header import HEADER_NAME
from shardprune.format.permute import PURPOSE_CONVERT, input_permutation
from shardprune.format.writer import DatasetWriter
from shardprune.policies.rng import philox
from shardprune.sources.base import ArraySource, BytesSource


def _sorted_arrays(n: int = 60, classes: int = 6) -> ArraySource:
    """Class-sorted input: sample i has label i * classes // n and holds i in every cell."""
    x = np.repeat(np.arange(n, dtype=np.int32)[:, None], 3, axis=1)
    return ArraySource(x, np.arange(n) * classes // n, num_classes=classes)


class _Blobs(BytesSource):
    """Encoded bytes in memory: sample i is b"blob-<i>", class-sorted labels."""

    kind = "blobs"

    def __init__(self, n: int) -> None:
        self.labels = np.arange(n, dtype=np.int64) * 4 // n
        self.num_classes = 4
        self.description = {"blobs": n}

    def tar_sizes(self) -> np.ndarray:
        return np.full(len(self), 1536, dtype=np.int64)

    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        for i in range(start, stop):
            yield {"bin": f"blob-{i}".encode()}

    def tar_fields(self, exts: set[str]) -> dict[str, dict[str, Any]]:
        return {"bin": {"encoding": "bytes"}}


def _cells(value: Any) -> list[int]:
    """An npy field as a list (tar samples come back as the member's bytes)."""
    arr = np.load(io.BytesIO(value), allow_pickle=False) if isinstance(value, bytes) else np.asarray(value)
    return [int(v) for v in arr.tolist()]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("k", [3, 10, 16])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_input_permutation_is_a_bijection_at_power_of_two_lengths(k: int, delta: int) -> None:
    n = 2**k + delta
    perm = input_permutation(n, 7)
    assert np.array_equal(np.sort(perm), np.arange(n))
    assert np.array_equal(perm, philox(7, PURPOSE_CONVERT).permutation(n))
    assert not np.array_equal(perm, input_permutation(n, 8))


@pytest.mark.parametrize("shard_format", ["tar", "zarr"])
def test_writer_shuffles_by_default_and_records_it(tmp_path: Path, shard_format: str) -> None:
    src = _sorted_arrays()
    header = DatasetWriter(tmp_path / "out", shard_format=shard_format, max_samples=20).write(src)
    perm = input_permutation(60, 0)
    assert header.source["order"] == {
        "shuffled": True, "shuffle_seed": 0, "permutation": f"philox(seed, {PURPOSE_CONVERT}).permutation(N)",
    }
    doc = json.loads((tmp_path / "out" / HEADER_NAME).read_text())
    assert doc["source"]["order"]["shuffle_seed"] == 0
    ds = ShardedDataset(tmp_path / "out")
    field = "npy" if shard_format == "tar" else "x"
    for i in range(60):
        sample = ds.read_sample(i)
        assert _cells(sample[field]) == [int(perm[i])] * 3 and sample["label"] == int(perm[i]) * 6 // 60
    assert np.array_equal(ds.labels, src.labels[perm])
    # Class-sorted input, mixed shards: the first shard of 20 holds more than the 2 classes it would in order.
    assert len(set(ds.labels[:20].tolist())) == 6


def test_keep_order_writes_the_input_order(tmp_path: Path) -> None:
    header = DatasetWriter(tmp_path / "out", max_samples=20, keep_order=True).write(_sorted_arrays())
    assert header.source["order"] == {"shuffled": False}
    ds = ShardedDataset(tmp_path / "out")
    assert [_cells(ds.read_sample(i)["npy"])[0] for i in range(60)] == list(range(60))


def test_bytes_source_shuffle_is_seeded_and_worker_independent(tmp_path: Path) -> None:
    one = DatasetWriter(tmp_path / "a", max_samples=7, shuffle_seed=3).write(_Blobs(50))
    two = DatasetWriter(tmp_path / "b", max_samples=7, shuffle_seed=3, workers=2).write(_Blobs(50))
    assert one.manifest_sha256 == two.manifest_sha256 and _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = DatasetWriter(tmp_path / "c", max_samples=7, shuffle_seed=4).write(_Blobs(50))
    assert other.manifest_sha256 != one.manifest_sha256
    perm = input_permutation(50, 3)
    ds = ShardedDataset(tmp_path / "a")
    assert [ds.read_sample(i)["bin"] for i in range(50)] == [f"blob-{p}".encode() for p in perm.tolist()]


def test_bad_shuffle_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"shuffle_seed=-1 must be an int in \[0, "):
        DatasetWriter(tmp_path / "out", shuffle_seed=-1)
    with pytest.raises(ConfigError, match=r"keep_order=1 must be True or False"):
        DatasetWriter(tmp_path / "out", keep_order=1)  # type: ignore[arg-type]
