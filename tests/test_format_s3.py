"""Datasets on S3 (a real s3rver server on 127.0.0.1): convert straight to s3://, read back by range."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import s3fs
from PIL import Image

from shardprune.convert import convert, make_source
from shardprune.dataset import ShardedDataset, open_dataset
from shardprune.errors import CorruptSampleError, DatasetNotFoundError, OutputExistsError
from shardprune.format.header import HEADER_NAME, MANIFEST_NAME
from shardprune.format.permute import input_permutation
from shardprune.format.writer import DatasetWriter
from shardprune.sources.base import ArraySource

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "make_shards.py"


def _imagefolder(root: Path) -> list[tuple[bytes, int]]:
    expected = []
    rng = np.random.default_rng(11)
    for label, cls in enumerate(["a", "b"]):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(buf, format="JPEG")
            (root / cls / f"{i}.jpg").write_bytes(buf.getvalue())
            expected.append((buf.getvalue(), label))
    return expected


def _fs(s3rver: Any) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(skip_instance_cache=True, **s3rver.storage_options)


def _remote_digest(fs: s3fs.S3FileSystem, url: str) -> dict[str, str]:
    root = url.removeprefix("s3://")
    return {
        path[len(root) + 1 :]: hashlib.sha256(fs.cat_file(path)).hexdigest()
        for path in sorted(fs.find(root))
    }


def _local_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def test_tar_to_s3_matches_local_and_reads_back(tmp_path: Path, s3rver: Any) -> None:
    expected = _imagefolder(tmp_path / "in")
    url = s3rver.url()
    opts = s3rver.storage_options
    remote = convert("imagefolder", url, root=tmp_path / "in", max_samples=4, storage_options=opts, workers=2)
    local = convert("imagefolder", tmp_path / "local", root=tmp_path / "in", max_samples=4)
    assert remote.manifest_sha256 == local.manifest_sha256 and len(remote.shards) == 3
    assert _remote_digest(_fs(s3rver), url) == _local_digest(tmp_path / "local")
    ds = open_dataset(url, opts)
    for i, src in enumerate(input_permutation(len(expected), 0).tolist()):  # the converter shuffles
        data, label = expected[src]
        sample = ds.read_sample(i)
        assert sample["jpg"] == data and sample["label"] == label
    # Same input again: nothing changes; a different one is refused without --overwrite.
    assert convert("imagefolder", url, root=tmp_path / "in", max_samples=4, storage_options=opts) == remote
    with pytest.raises(OutputExistsError, match="already holds a different dataset"):
        convert("imagefolder", url, root=tmp_path / "in", max_samples=3, storage_options=opts)
    assert _remote_digest(_fs(s3rver), url) == _local_digest(tmp_path / "local")


def test_zarr_to_s3_and_corruption_is_named(s3rver: Any) -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 5, 4)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    url = s3rver.url()
    opts = s3rver.storage_options
    header = DatasetWriter(url, shard_format="zarr", compression="zstd", max_samples=8, storage_options=opts, keep_order=True).write(
        ArraySource(x, y)
    )
    ds = ShardedDataset(url, opts)
    assert len(ds) == 30 and [s.samples for s in header.shards] == [8, 8, 8, 6]
    for i in range(30):
        sample = ds.read_sample(i)
        np.testing.assert_array_equal(sample["x"], x[i])
        assert sample["label"] == y[i]
    # Flip one byte of sample 9 in its shard object on the server.
    fs = _fs(s3rver)
    victim = 9
    shard_path = f"{url.removeprefix('s3://')}/{header.shards[int(ds.manifest.shard[victim])].path}"
    blob = bytearray(fs.cat_file(shard_path))
    offset = int(ds.manifest.offset[victim])
    blob[offset] ^= 0xFF
    fs.pipe_file(shard_path, bytes(blob))
    fresh = ShardedDataset(url, opts)
    with pytest.raises(CorruptSampleError, match=rf"sample id {victim} at offset {offset}"):
        fresh.read_sample(victim)
    fresh.read_sample(victim + 1)


def test_missing_s3_dataset_and_header_written_last(s3rver: Any) -> None:
    url = s3rver.url()
    with pytest.raises(DatasetNotFoundError, match="shardprune.json is missing"):
        ShardedDataset(url, s3rver.storage_options)
    fs = _fs(s3rver)
    # A manifest without a header (an interrupted upload) is not a dataset.
    fs.pipe_file(f"{url.removeprefix('s3://')}/{MANIFEST_NAME}", b"partial")
    with pytest.raises(DatasetNotFoundError, match=HEADER_NAME):
        ShardedDataset(url, s3rver.storage_options)


def test_cli_writes_to_s3(tmp_path: Path, s3rver: Any) -> None:
    url = s3rver.url()
    endpoint = s3rver.storage_options["client_kwargs"]["endpoint_url"]
    cmd = [sys.executable, str(TOOL), "digits", "-o", url, "--num-samples", "40", "--endpoint-url", endpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "40 samples in 1 tar shards" in done.stdout
    ds = ShardedDataset(url, s3rver.storage_options)
    assert len(ds) == 40 and ds.read_sample(39)["label"] == ds.labels[39]


def test_index_tars_on_s3_with_the_cli(tmp_path: Path, s3rver: Any) -> None:
    # WebDataset tars already on object storage: `make_shards.py index s3://...` writes the manifest beside them.
    _imagefolder(tmp_path / "in")
    DatasetWriter(tmp_path / "local", shard_format="tar", max_samples=4).write(
        make_source("imagefolder", root=str(tmp_path / "in"))
    )
    url = s3rver.url()
    fs = _fs(s3rver)
    tars = sorted((tmp_path / "local" / "shards").glob("*.tar"))
    for t in tars:
        fs.put_file(str(t), f"{url}/wds/{t.name}")
    done = subprocess.run([sys.executable, str(TOOL), "index", f"{url}/wds", "--endpoint-url", s3rver.endpoint_url,
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    remote = open_dataset(f"{url}/wds", s3rver.storage_options)
    local = open_dataset(tmp_path / "local")
    assert len(remote) == len(local) == 10
    assert [s.path for s in remote.header.shards] == [t.name for t in tars]
    for i in range(len(local)):
        assert remote.read_raw(i) == local.read_raw(i)
    # A chained URL reads the same dataset through a local cache.
    cached = open_dataset(f"simplecache::{url}/wds", {"s3": s3rver.storage_options,
                                                      "simplecache": {"cache_storage": str(tmp_path / "cache")}})
    assert cached.read_raw(3) == local.read_raw(3)
