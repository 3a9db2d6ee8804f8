"""Small generated datasets and helpers shared by the loader tests."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from shardprune.format.writer import DatasetWriter
from shardprune.loader import StreamingLoader
from shardprune.loader.decode import Sample
from shardprune.policies.decision import EpochDecision, PolicyBase
from shardprune.scores.snapshot import ScoreSnapshot, fresh_columns
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
    DatasetWriter(out, shard_format=shard_format, max_samples=per_shard, storage_options=storage_options, keep_order=True).write(src)
    return src


def seen_snapshot(n: int = N, seed: int = 5, epoch: int = 0) -> ScoreSnapshot:
    """Scores as if every sample had been seen once: random positive losses."""
    rng = np.random.default_rng([seed, epoch])
    cols = fresh_columns(n)
    loss = rng.gamma(2.0, 0.5, n).astype(np.float32)
    cols["loss"] = loss
    cols["loss_ema"] = loss
    cols["delta_ema"] = rng.random(n).astype(np.float32) * 0.1
    cols["visits"] = np.full(n, 2, dtype=np.int32)
    cols["last_epoch"] = np.zeros(n, dtype=np.int32)
    return ScoreSnapshot.from_columns(cols)


class SeenStore:
    """A score source whose snapshot is :func:`seen_snapshot` (so budgeted policies prune).

    ``bump()`` changes the scores, as training would, to test snapshot mismatches.
    """

    def __init__(self, n: int = N, seed: int = 5) -> None:
        self.n = n
        self.seed = seed
        self.version = 0

    def snapshot(self) -> ScoreSnapshot:
        return seen_snapshot(self.n, self.seed, self.version)

    def bump(self) -> None:
        self.version += 1


class FixedKeep(PolicyBase):
    """A policy that keeps a fixed mask every epoch, weight 1 / keep ratio."""

    name = "fixed_keep"

    def __init__(self, keep: np.ndarray) -> None:
        super().__init__(kept=int(np.count_nonzero(keep)), n=int(len(keep)))
        self.keep = np.asarray(keep, dtype=bool)

    def decide(self, snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> EpochDecision:
        ratio = max(int(np.count_nonzero(self.keep)), 1) / len(self.keep)
        weights = np.where(self.keep, 1.0 / ratio, 1.0).astype(np.float32)
        return EpochDecision(keep=self.keep.copy(), weights=weights, keep_prob=None)


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


def write_mixed_tars(root: Path, n: int = 12) -> list[dict[str, Any]]:
    """WebDataset tars with one member of each decodable kind; returns what each sample holds.

    Fields: ``jpg`` (RGB), ``png`` (grayscale), ``npy`` (int16 2x3), ``cls``, ``txt``
    and ``bin`` (raw bytes). Index them with :func:`shardprune.format.tarindex.index_tars`.
    """
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(9)
    expected: list[dict[str, Any]] = []
    root.mkdir(parents=True, exist_ok=True)
    writers = [wds.TarWriter(str(root / f"part-{k}.tar")) for k in range(2)]
    try:
        for i in range(n):
            rgb = rng.integers(0, 255, (10 + i, 14, 3), dtype=np.uint8)
            gray = rng.integers(0, 255, (7, 9), dtype=np.uint8)
            arr = rng.integers(-500, 500, (2, 3)).astype(np.int16)
            jpg, png, npy = io.BytesIO(), io.BytesIO(), io.BytesIO()
            Image.fromarray(rgb).save(jpg, format="JPEG", quality=95)
            Image.fromarray(gray).save(png, format="PNG")
            np.save(npy, arr, allow_pickle=False)
            fields = {
                "jpg": jpg.getvalue(),
                "png": png.getvalue(),
                "npy": npy.getvalue(),
                "cls": str(i % 3).encode(),
                "txt": f"sample {i} é".encode(),
                "bin": bytes([i, 255 - i, 7]),
            }
            writers[i * 2 // n].write({"__key__": f"s{i:04d}", **fields})
            expected.append({"shape": rgb.shape, "gray": gray, "npy": arr, "cls": i % 3, "txt": f"sample {i} é",
                             "bin": fields["bin"], "key": f"s{i:04d}"})
    finally:
        for w in writers:
            w.close()
    return expected


class KillWorkerOnce:
    """Transform that SIGKILLs its worker process the first time it runs while ``marker`` exists.

    The marker is removed first, so the workers of the next pass proceed normally.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, sample: Sample) -> Sample:
        try:
            os.remove(self.marker)
        except FileNotFoundError:
            return sample
        os.kill(os.getpid(), 9)
        return sample
