"""The shuffle-quality report: exact numbers on a small class-sorted set, no sample byte read, CLI."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shardprune.errors import ConfigError
from shardprune.format.writer import DatasetWriter
from shardprune.loader.quality import batch_label_stats, manifest_report, shuffle_report, uniform_distinct
from shardprune.sources.base import ArraySource

REPO = Path(__file__).resolve().parents[1]


def _sorted_layout(n: int = 64, classes: int = 4) -> tuple[np.ndarray, ...]:
    """Class-sorted: one class per shard, 100-byte samples back to back."""
    per = n // classes
    labels = np.arange(n) // per
    return labels, labels.copy(), (np.arange(n) % per) * 100, np.full(n, 100)


def test_batch_label_stats_exact() -> None:
    distinct, entropy = batch_label_stats(np.array([0, 0, 1, 1, 2, 2, 2, 2, 5]), 4)  # the 9th is no full batch
    assert distinct.tolist() == [2.0, 1.0] and entropy.tolist() == [1.0, 0.0]
    distinct, entropy = batch_label_stats(np.array([3, 1, 2, 0]), 4)
    assert distinct.tolist() == [4.0] and entropy.tolist() == [2.0]


def test_uniform_distinct_is_the_hypergeometric_expectation() -> None:
    exact = 4 * (1 - math.comb(48, 8) / math.comb(64, 8))
    assert uniform_distinct(np.array([16, 16, 16, 16]), 8) == pytest.approx(exact, rel=1e-12)
    assert uniform_distinct(np.array([5, 0, 3]), 8) == pytest.approx(2.0)  # every sample drawn
    assert uniform_distinct(np.array([10]), 3) == pytest.approx(1.0)


def test_window_mode_on_class_sorted_shards_gives_one_class_per_batch() -> None:
    labels, shard, offset, length = _sorted_layout()
    r = manifest_report(labels, shard, offset, length, 4, batch_size=8, world_size=2, shuffle="window",
                        shuffle_window=1, shuffle_buffer=1)
    assert (r.batches, r.kept, r.distinct_labels, r.entropy_bits) == (8, 64, 1.0, 0.0)
    # Each rank reads two whole shards, one request each; nothing but the samples is read.
    assert (r.requests, r.bytes_read, r.kept_bytes, r.read_per_kept) == (4, 6400, 6400, 1.0)
    assert r.distinct_labels_uniform == pytest.approx(4 * (1 - math.comb(48, 8) / math.comb(64, 8)))
    assert r.quality == pytest.approx(1.0 / r.distinct_labels_uniform)


def test_global_mode_is_the_uniform_reference_and_pays_in_requests() -> None:
    labels, shard, offset, length = _sorted_layout()
    r = manifest_report(labels, shard, offset, length, 4, batch_size=8, world_size=2, shuffle="global",
                        shuffle_buffer=1)
    assert r.entropy_bits == r.entropy_bits_uniform > 1.5
    assert r.distinct_labels > 3.5 and r.read_per_kept == 1.0
    assert 56 <= r.requests <= 64  # about one per sample: chunks of one slot merge nothing but neighbours


def test_block_mode_batches_hold_whole_blocks() -> None:
    labels, shard, offset, length = _sorted_layout()
    r = manifest_report(labels, shard, offset, length, 4, batch_size=8, world_size=2, shuffle="block",
                        shuffle_block=4, shuffle_buffer=1)
    # A batch of 8 is two blocks of 4 (one class each): 1 or 2 classes, entropy 0 or 1 bit.
    assert 1.0 <= r.distinct_labels <= 2.0 and r.entropy_bits == pytest.approx(r.distinct_labels - 1.0)
    assert 8 <= r.requests <= 16 and r.read_per_kept == 1.0


def test_report_reads_only_the_manifest_and_the_converter_shuffle_mixes_window_batches(tmp_path: Path) -> None:
    x = np.zeros((200, 16), dtype=np.uint8)
    y = np.arange(200) // 20  # class-sorted input, 10 classes
    DatasetWriter(tmp_path / "sorted", max_samples=20, keep_order=True).write(ArraySource(x, y, num_classes=10))
    DatasetWriter(tmp_path / "mixed", max_samples=20).write(ArraySource(x, y, num_classes=10))
    for name in ("sorted", "mixed"):
        shutil.rmtree(tmp_path / name / "shards")  # no sample byte can be read now
    settings = dict(batch_size=10, shuffle="window", shuffle_window=1, shuffle_buffer=1)
    in_order = shuffle_report(tmp_path / "sorted", **settings)
    shuffled = shuffle_report(tmp_path / "mixed", **settings)
    assert in_order.distinct_labels == 1.0 and in_order.storage == "local"
    assert shuffled.distinct_labels > 5.0  # 10 random samples of 10 classes: about 6.5 expected
    assert in_order.distinct_labels_uniform == shuffled.distinct_labels_uniform


def test_default_mode_follows_the_converter_order_and_storage_kind(tmp_path: Path) -> None:
    x = np.zeros((40, 4), dtype=np.uint8)
    y = np.arange(40) // 10
    DatasetWriter(tmp_path / "sorted", max_samples=10, keep_order=True).write(ArraySource(x, y, num_classes=4))
    DatasetWriter(tmp_path / "mixed", max_samples=10).write(ArraySource(x, y, num_classes=4))
    # Shuffled by the converter: the window order is already mixed and makes the fewest requests.
    assert shuffle_report(tmp_path / "mixed", batch_size=4).shuffle == "window"
    assert shuffle_report(tmp_path / "mixed", batch_size=4, storage="remote").shuffle == "window"
    assert shuffle_report(tmp_path / "sorted", batch_size=4).shuffle == "global"
    assert shuffle_report(tmp_path / "sorted", batch_size=4, storage="remote").shuffle == "block"
    from shardprune import StreamingLoader

    for name, mode in (("sorted", "global"), ("mixed", "window")):
        with StreamingLoader(tmp_path / name, batch_size=4, num_epochs=1) as loader:
            assert loader.cfg.shuffle == mode and loader.config()["shuffle"] == mode
    with StreamingLoader(tmp_path / "mixed", batch_size=4, num_epochs=1, shuffle="block") as loader:
        assert loader.cfg.shuffle == "block"


def test_cli_prints_a_table_and_json(tmp_path: Path) -> None:
    x = np.zeros((120, 8), dtype=np.uint8)
    DatasetWriter(tmp_path / "ds", max_samples=30, keep_order=True).write(
        ArraySource(x, np.arange(120) // 30, num_classes=4)
    )
    cmd = [sys.executable, "-m", "shardprune", "shuffle-report", str(tmp_path / "ds"), "--batch-size", "10"]
    proc = subprocess.run([*cmd, "--shuffle", "window", "--shuffle", "global", "--json"], capture_output=True,
                          text=True, cwd=REPO, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["shuffle"] for r in rows] == ["window", "global"]
    assert rows[0]["kept"] == 120 and rows[0]["batches"] == 12 and rows[0]["read_per_kept"] == 1.0
    table = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "| global | local |" in table and "distinct labels / batch" in table
    bad = subprocess.run([*cmd, "--world-size", "0"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "world_size=0 must be an int >= 1" in bad.stderr


def test_unlabelled_dataset_is_refused() -> None:
    n = 8
    with pytest.raises(ConfigError, match="has no labels"):
        manifest_report(np.full(n, -1), np.zeros(n, int), np.arange(n) * 10, np.full(n, 10), 1, batch_size=2)
    with pytest.raises(ConfigError, match=r"storage='s3' is not one of local, remote"):
        manifest_report(np.zeros(n, int), np.zeros(n, int), np.arange(n) * 10, np.full(n, 10), 1, batch_size=2,
                        storage="s3")
