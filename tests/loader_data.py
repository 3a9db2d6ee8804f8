"""Small generated datasets and helpers shared by the loader tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from shardprune.format.writer import DatasetWriter
from shardprune.loader import StreamingLoader
from shardprune.loader.decode import Sample
from shardprune.sources.base import ArraySource

#: Samples, classes and samples per shard of the standard test dataset.
N = 300
CLASSES = 5
PER_SHARD = 25


def make_arrays(n: int = N, features: int = 6, seed: int = 3) -> ArraySource:
    """Float feature rows whose first column is the sample id (so content can be checked)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    x[:, 0] = np.arange(n, dtype=np.float32)
    y = rng.integers(0, CLASSES, n)
    return ArraySource(x, y, num_classes=CLASSES)


def write_dataset(
    out: str | os.PathLike[str],
    *,
    n: int = N,
    per_shard: int = PER_SHARD,
    shard_format: str = "tar",
    storage_options: dict[str, Any] | None = None,
) -> ArraySource:
    """Write the standard test dataset to ``out`` (local or s3://) and return its source."""
    src = make_arrays(n)
    DatasetWriter(out, shard_format=shard_format, max_samples=per_shard, storage_options=storage_options).write(src)
    return src


def as_float(sample: Sample) -> Sample:
    """Transform used in worker tests: module level, so worker processes can unpickle it."""
    out = dict(sample)
    out["npy"] = np.asarray(sample["npy"], dtype=np.float32) * 1.0
    out["seen_by_pid"] = os.getpid()
    return out


def epoch_ids(loader: StreamingLoader) -> list[int]:
    """Every id the loader yields in one pass, in order."""
    out: list[int] = []
    for batch in loader:
        out.extend(int(i) for i in batch["ids"])
    return out


def ids_of(path: Path) -> list[int]:
    """Nothing but a helper to keep type checkers quiet about Path use."""
    return [int(p) for p in path.read_text().split()]
