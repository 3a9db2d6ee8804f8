"""DatasetWriter: shard rolling, determinism across workers, atomic publishing, overwrite policy."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardprune.dataset import ShardedDataset
from shardprune.errors import DatasetError, DatasetNotFoundError, OutputExistsError, SourceError
from shardprune.format.header import HEADER_NAME, Header
from shardprune.format.writer import STAGING_NAME, DatasetWriter, plan_shards
from shardprune.sources.base import ArraySource


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _source(n: int = 50, seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    return ArraySource(rng.integers(0, 255, (n, 6, 5), dtype=np.uint8), rng.integers(0, 4, n), num_classes=4)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 100), min_size=0, max_size=40),
    st.one_of(st.none(), st.integers(1, 300)),
    st.one_of(st.none(), st.integers(1, 7)),
)
def test_plan_covers_all_samples_within_limits(sizes: list[int], max_bytes: int | None, max_samples: int | None) -> None:
    plan = plan_shards(np.array(sizes, dtype=np.int64), max_bytes, max_samples)
    assert [a for a, _ in plan] == ([0] + [b for _, b in plan[:-1]] if plan else [])
    assert (plan[-1][1] if plan else 0) == len(sizes)
    for a, b in plan:
        assert b > a
        if max_samples is not None:
            assert b - a <= max_samples
        if max_bytes is not None and b - a > 1:
            assert sum(sizes[a:b]) <= max_bytes


@pytest.mark.parametrize("shard_format", ["tar", "zarr"])
def test_round_trip_and_rolling_by_count(tmp_path: Path, shard_format: str) -> None:
    src = _source()
    header = DatasetWriter(tmp_path / "out", shard_format=shard_format, max_samples=16, keep_order=True).write(src)
    assert [s.samples for s in header.shards] == [16, 16, 16, 2]
    ds = ShardedDataset(tmp_path / "out")
    np.testing.assert_array_equal(ds.labels, src.labels)
    for i in range(len(src)):
        sample = ds.read_sample(i)
        if shard_format == "zarr":
            np.testing.assert_array_equal(sample["x"], src.x[i])
        else:
            assert sample["cls"] == str(src.labels[i]).encode()
            assert sample["__key__"] == f"{i:010d}"


def test_rolling_by_bytes(tmp_path: Path) -> None:
    # Each sample is 1024 (npy) + 1024 (cls) bytes in the tar.
    header = DatasetWriter(tmp_path / "out", max_bytes=5 * 2048).write(_source(12))
    assert [s.samples for s in header.shards] == [5, 5, 2]


@pytest.mark.parametrize("shard_format", ["tar", "zarr"])
def test_output_identical_for_any_worker_count(tmp_path: Path, shard_format: str) -> None:
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        DatasetWriter(out, shard_format=shard_format, max_samples=9, workers=workers).write(_source(40))
        digests.append(_tree_digest(out))
    assert digests[0] == digests[1]


class _Failing(ArraySource):
    """Raises after ``fail_at`` samples, like a crash in the middle of a conversion."""

    fail_at = 20

    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        for i, fields in zip(range(start, stop), super().tar_samples(start, stop)):
            if i == self.fail_at:
                raise SourceError("simulated failure")
            yield fields


def test_failed_run_publishes_nothing_and_rerun_finishes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = _Failing(_source().x, _source().labels, num_classes=4)
    with pytest.raises(SourceError, match="simulated"):
        DatasetWriter(out, max_samples=8).write(bad)
    assert not (out / HEADER_NAME).exists()
    assert not (out / STAGING_NAME).exists()
    with pytest.raises(DatasetNotFoundError):
        ShardedDataset(out)
    DatasetWriter(out, max_samples=8).write(_source())
    assert len(ShardedDataset(out)) == 50


def test_leftover_partial_is_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "000099.tar").write_bytes(b"junk from a killed run")
    (out / "manifest.arrow").write_bytes(b"junk")
    (out / STAGING_NAME).mkdir()
    DatasetWriter(out, max_samples=25).write(_source())
    assert sorted(os.listdir(out / "shards")) == ["000000.tar", "000001.tar"]
    assert sorted(os.listdir(out)) == ["manifest.arrow", "shardprune.json", "shards"]


def test_existing_dataset_policy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = DatasetWriter(out).write(_source(seed=0))
    before = _tree_digest(out)
    # The same input again: nothing changes.
    assert DatasetWriter(out).write(_source(seed=0)) == first
    assert _tree_digest(out) == before
    with pytest.raises(OutputExistsError, match="different dataset.*--overwrite"):
        DatasetWriter(out).write(_source(seed=1))
    assert _tree_digest(out) == before
    second = DatasetWriter(out, overwrite=True).write(_source(seed=1))
    assert second.manifest_sha256 != first.manifest_sha256
    assert ShardedDataset(out).fingerprint == second.manifest_sha256


def test_foreign_files_in_output_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        DatasetWriter(out).write(_source())
    DatasetWriter(out, overwrite=True).write(_source())
    assert (out / "notes.txt").read_text() == "mine"


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        DatasetWriter(tmp_path / "f").write(_source())


def test_header_rejects_zarr_with_two_fields(tmp_path: Path) -> None:
    DatasetWriter(tmp_path / "out", shard_format="zarr").write(_source())
    text = (tmp_path / "out" / HEADER_NAME).read_text()
    doc = Header.from_json(text)
    fields = dict(doc.fields)
    fields["y"] = fields["x"]
    bad = Header(doc.num_samples, "zarr", fields, doc.shards, doc.manifest_sha256, doc.num_classes)
    with pytest.raises(DatasetError, match="exactly one array field"):
        Header.from_json(bad.to_json())


def test_zarr_header_fields(tmp_path: Path) -> None:
    header = DatasetWriter(tmp_path / "out", shard_format="zarr", compression="zstd").write(_source())
    assert header.fields == {"x": {"encoding": "array", "dtype": "uint8", "shape": [6, 5], "compression": "zstd"}}
    assert header.shards[0].path == "shards/000000.zarr/x/c/0/0/0"
    assert header.shards[0].bytes == (tmp_path / "out" / header.shards[0].path).stat().st_size
