"""The local cache of fetched samples (shardprune/cache.py) on a real s3rver, with real worker processes."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loader_data import as_float, write_dataset
from shardprune.cache import RangeCache, dataset_key, parse_cache_limit
from shardprune.errors import ConfigError
from shardprune.loader import StreamingLoader
from shardprune.loader.ahead import DEFAULT_PLAN_AHEAD
from shardprune.policies.decision import EpochDecision, PolicyBase
from shardprune.scores.snapshot import ScoreSnapshot

#: A presence record on disk (layout 2): shard offset, length, data position (int64), CRC32, padding.
RECORD = 32

N = 200
PER_SHARD = 25


class EpochMask(PolicyBase):
    """Keep a seeded half of the samples, a different half each epoch (weight 2)."""

    name = "epoch_mask"

    def __init__(self, n: int) -> None:
        super().__init__(n=n)

    def decide(self, snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> EpochDecision:
        n = int(self.params["n"])
        keep = np.zeros(n, dtype=bool)
        keep[np.random.default_rng([seed, epoch]).permutation(n)[: n // 2]] = True
        return EpochDecision(keep=keep, weights=np.full(n, 2.0, dtype=np.float32), keep_prob=None)


@pytest.fixture(scope="module")
def dataset(s3rver: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    url = s3rver.url()
    write_dataset(url, n=N, per_shard=PER_SHARD, storage_options=s3rver.storage_options)
    local = tmp_path_factory.mktemp("cache") / "ds"
    write_dataset(local, n=N, per_shard=PER_SHARD)
    return url, local


def _loader(url: str, s3rver: Any, **kw: Any) -> StreamingLoader:
    args: dict[str, Any] = dict(
        batch_size=10, num_epochs=4, seed=4, shuffle="window", drop_last=True, transform=as_float,
        storage_options=s3rver.storage_options, max_gap=0, gap_budget=0,
        # Exact counts per epoch: with plan_ahead, workers may read the next epoch's first units
        # while this epoch's last ones are still being cached (correct, but a few more misses).
        plan_ahead=0,
    )
    args.update(kw)
    return StreamingLoader(url, **args)


def _epoch(loader: StreamingLoader, epoch: int) -> tuple[list[np.ndarray], dict[str, int]]:
    loader.set_epoch(epoch)
    out = [np.column_stack([b["ids"].numpy(), b["weights"].numpy(), b["npy"].numpy()]) for b in loader]
    return out, loader.epoch_stats.as_dict()


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_second_unpruned_epoch_reads_nothing_from_storage(dataset: tuple[str, Path], s3rver: Any,
                                                          tmp_path: Path) -> None:
    url, _ = dataset
    with _loader(url, s3rver) as plain:
        want = [_epoch(plain, e) for e in range(2)]
    with _loader(url, s3rver, cache_dir=tmp_path, cache_limit="1GB", num_workers=2) as loader:
        got = [_epoch(loader, e) for e in range(2)]
    (b0, s0), (b1, s1) = got
    assert _same(b0, want[0][0]) and _same(b1, want[1][0])  # the same samples, in the same order
    total = int(loader.dataset.manifest.length.sum())
    assert (s0["bytes_read"], s0["cache_hits"], s0["cache_bytes"]) == (total, 0, 0)
    assert s0["requests"] == want[0][1]["requests"]
    assert (s1["bytes_read"], s1["requests"], s1["cache_hits"], s1["cache_bytes"]) == (0, 0, N, total)
    assert s1["bytes_kept"] == total


def test_pruned_epochs_read_only_never_cached_samples(dataset: tuple[str, Path], s3rver: Any, tmp_path: Path) -> None:
    url, _ = dataset
    policy = EpochMask(N)
    with _loader(url, s3rver, policy=policy) as plain:
        want = [_epoch(plain, e)[0] for e in range(4)]
    cached = np.zeros(N, dtype=bool)
    with _loader(url, s3rver, policy=policy, cache_dir=tmp_path, num_workers=2) as loader:
        length = loader.dataset.manifest.length.astype(np.int64)
        for e in range(4):
            batches, stats = _epoch(loader, e)
            assert loader.decision is not None
            keep = loader.decision.keep
            assert _same(batches, want[e])
            assert stats["bytes_read"] == int(length[keep & ~cached].sum())
            assert stats["cache_hits"] == int((keep & cached).sum())
            assert stats["cache_bytes"] == int(length[keep & cached].sum())
            assert stats["gap_bytes"] == 0
            cached |= keep
        assert 0 < stats["cache_hits"] < N // 2  # a later epoch really mixes hits and misses


def test_limit_is_honoured_after_every_epoch(dataset: tuple[str, Path], s3rver: Any, tmp_path: Path) -> None:
    url, _ = dataset
    limit = 120_000  # about two whole shards (56 KiB each on disk)
    with _loader(url, s3rver, policy=EpochMask(N)) as plain:
        want = [_epoch(plain, e)[0] for e in range(4)]
    # The default plan_ahead: workers read the next epoch's first units while this one drains.
    with _loader(url, s3rver, policy=EpochMask(N), cache_dir=tmp_path, cache_limit=limit, num_workers=2,
                 plan_ahead=DEFAULT_PLAN_AHEAD) as loader:
        cache = loader.fetcher.cache
        assert cache is not None
        hits = 0
        for e in range(4):
            batches, stats = _epoch(loader, e)
            assert _same(batches, want[e])
            assert 0 < cache.disk_usage() <= limit
            hits += stats["cache_hits"]
            # What storage was asked for and what the cache served add up to the kept samples.
            assert stats["bytes_read"] + stats["cache_bytes"] == stats["bytes_kept"]
        assert hits > 0
        shards = {p.name for p in (tmp_path / cache.key).glob("*.log")}
        assert 0 < len(shards) < N // PER_SHARD  # some shards were evicted


def _fill(cache: RangeCache, shard: int, nbytes: int = 8192) -> bytes:
    data = bytes([shard % 256]) * nbytes
    cache.store(shard, [(0, data)])
    time.sleep(0.02)  # past the filesystem's timestamp tick: the LRU order is by log mtime
    return data


def test_eviction_takes_other_datasets_first_then_the_most_recently_used_shard(tmp_path: Path) -> None:
    probe = RangeCache(tmp_path / "probe", None, "k")
    _fill(probe, 0)
    # One shard's bytes and log as this filesystem allocates them, and the rest (folders).
    per_shard = sum((tmp_path / "probe" / "k" / f"0.{ext}").stat().st_blocks * 512 for ext in ("bin", "log"))
    limit = probe.disk_usage() + 2 * per_shard + per_shard // 2 + 8192  # 2.5 shards (+ a second key's folder)
    old = RangeCache(tmp_path / "c", limit, "old")  # another dataset in the same cache_dir
    old_data = _fill(old, 7)
    cache = RangeCache(tmp_path / "c", limit, "k")
    data = {s: _fill(cache, s) for s in range(2)}  # full: old 7, k 0, k 1
    assert cache.lookup(0, [0], [8192]) == [data[0]]  # shard 0 used again: the most recent now
    time.sleep(0.02)
    data[2] = _fill(cache, 2)  # the other dataset's shard goes first, however old
    assert old.lookup(7, [0], [8192]) == [None]
    assert [s for s in range(3) if cache.lookup(s, [0], [8192]) == [data[s]]] == [0, 1, 2]
    time.sleep(0.02)
    assert cache.lookup(1, [0], [8192]) == [data[1]]  # 1 is now the most recently used
    time.sleep(0.02)
    data[3] = _fill(cache, 3)  # within this dataset: the most recently used goes (1)
    present = [s for s in range(4) if cache.lookup(s, [0], [8192]) == [data[s]]]
    assert present == [0, 2, 3], present
    assert old_data and cache.disk_usage() <= cache.cache_limit  # type: ignore[operator]
    # A shard that cannot fit alone is not cached (and evicts nothing it could not use).
    cache.store(9, [(0, b"x" * (4 * per_shard))])
    assert cache.lookup(9, [0], [4 * per_shard]) == [None]


def test_eviction_order_is_a_pure_function() -> None:
    from shardprune.cache import eviction_order

    entries = [("k", 0, 10, 300), ("k", 1, 10, 100), ("old", 5, 10, 500), ("k", 2, 10, 200), ("old", 6, 10, 50)]
    assert [(k, s) for k, s, *_ in eviction_order(entries, "k")] == [("old", 6), ("old", 5), ("k", 0), ("k", 2), ("k", 1)]


def test_corrupted_cache_bytes_are_refetched(dataset: tuple[str, Path], s3rver: Any, tmp_path: Path) -> None:
    url, _ = dataset
    with _loader(url, s3rver) as plain:
        want = [_epoch(plain, e)[0] for e in range(3)]
    with _loader(url, s3rver, cache_dir=tmp_path, num_workers=1) as loader:
        _epoch(loader, 0)
        m = loader.dataset.manifest
        cache = loader.fetcher.cache
        assert cache is not None
        victim = 30  # shard 1
        shard, offset, length = int(m.shard[victim]), int(m.offset[victim]), int(m.length[victim])
        position = _positions(tmp_path / cache.key / f"{shard}.log")[offset]
        with open(tmp_path / cache.key / f"{shard}.bin", "r+b") as f:
            f.seek(position)
            f.write(bytes(b ^ 0xFF for b in f.read(length)))
        batches, stats = _epoch(loader, 1)
        assert _same(batches, want[1])  # the right sample, no error
        # The shard's samples are read in one request: the bad one alone is fetched again ...
        assert (stats["bytes_read"], stats["requests"], stats["cache_hits"]) == (length, 1, N - 1)
        # ... and the shard is cached again, with its good samples.
        batches, stats = _epoch(loader, 2)
        assert _same(batches, want[2]) and (stats["bytes_read"], stats["cache_hits"]) == (0, N)


def test_torn_presence_record_is_a_miss_and_is_repaired(dataset: tuple[str, Path], s3rver: Any,
                                                        tmp_path: Path) -> None:
    url, _ = dataset
    with _loader(url, s3rver) as plain:
        want = [_epoch(plain, e)[0] for e in range(3)]
    with _loader(url, s3rver, cache_dir=tmp_path) as loader:
        _epoch(loader, 0)
        m = loader.dataset.manifest
        cache = loader.fetcher.cache
        assert cache is not None
    log_path = tmp_path / cache.key / "2.log"
    records = log_path.read_bytes()
    last_offset = struct.unpack_from("<q", records, len(records) - RECORD)[0]
    victim = int(np.flatnonzero((m.shard == 2) & (m.offset == last_offset))[0])
    os.truncate(log_path, len(records) - 5)  # a writer killed in the middle of its last record
    # The next run (a worker process) finds the torn record.
    with _loader(url, s3rver, cache_dir=tmp_path, num_workers=1) as loader:
        batches, stats = _epoch(loader, 1)
        assert _same(batches, want[1])
        assert (stats["bytes_read"], stats["requests"], stats["cache_hits"]) == (int(m.length[victim]), 1, N - 1)
        assert log_path.stat().st_size == len(records)  # cut back to whole records, then appended
        batches, stats = _epoch(loader, 2)
        assert _same(batches, want[2]) and (stats["bytes_read"], stats["cache_hits"]) == (0, N)


def _sample_bytes(k: int) -> bytes:
    return bytes([k % 251]) * 700


def _writer(cache: RangeCache, parity: int, barrier: Any) -> None:
    # This writer's samples (odd or even), five per call, plus every tenth sample, which both write.
    # The two writers meet at a barrier before each tenth of their samples, so their writes
    # overlap all along (the log's order shows it).
    mine = [k for k in range(1000) if k % 2 == parity or k % 10 == 0]
    for part in np.array_split(np.array(mine), 10):
        barrier.wait(30)
        for i in range(0, len(part), 5):
            cache.store(7, [(int(k) * 1000, _sample_bytes(int(k))) for k in part[i : i + 5]])


def test_two_processes_writing_one_shard_stay_correct(tmp_path: Path) -> None:
    cache = RangeCache(tmp_path, "1GiB", "k")
    assert pickle.loads(pickle.dumps(cache)).__getstate__() == cache.__getstate__()  # settings only
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(cache, parity, barrier)) for parity in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    offsets = [k * 1000 for k in range(1000)]
    assert cache.lookup(7, offsets, [700] * 1000) == [_sample_bytes(k) for k in range(1000)]
    logged = [struct.unpack_from("<q", rec)[0] // 1000 for rec in _records(tmp_path / "k" / "7.log")]
    # Each sample marked once (the shared ones too: a writer re-checks the log under the lock), and
    # the two writers' records interleave.
    assert sorted(logged) == list(range(1000))
    own = [k for k in logged if k % 10]  # the samples only one writer writes
    switches = sum(a % 2 != b % 2 for a, b in zip(own, own[1:]))
    assert switches >= 9  # at least one per tenth: both write in each


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert len(data) % RECORD == 0
    return [data[i : i + RECORD] for i in range(0, len(data), RECORD)]


def _positions(path: Path) -> dict[int, int]:
    """A presence log's records: shard offset -> position of the sample's bytes in the data file."""
    return {off: pos for off, _, pos in (struct.unpack_from("<qqq", rec) for rec in _records(path))}


def test_samples_are_packed_whatever_their_offsets(tmp_path: Path) -> None:
    """Cached bytes take their own length on disk: 4 KiB samples at offsets 512 past a 4 KiB
    boundary (a tar's headers) took two blocks each when written at their shard offsets."""
    cache = RangeCache(tmp_path, None, "k")
    samples = [(4608 * k + 512, bytes([k % 256]) * 4096) for k in range(64)]
    cache.store(3, samples)
    data = tmp_path / "k" / "3.bin"
    assert data.stat().st_size == 64 * 4096
    assert data.stat().st_blocks * 512 <= 64 * 4096 + 4096
    assert sorted(_positions(tmp_path / "k" / "3.log").values()) == [4096 * k for k in range(64)]
    assert cache.lookup(3, [o for o, _ in samples], [4096] * 64) == [d for _, d in samples]


def test_workers_writing_the_same_shard_through_the_loader(dataset: tuple[str, Path], s3rver: Any,
                                                           tmp_path: Path) -> None:
    url, _ = dataset
    with _loader(url, s3rver) as plain:
        want = [_epoch(plain, e)[0] for e in range(2)]
    # Units of 8 KiB: each shard is read by many units, spread over both workers at once.
    with _loader(url, s3rver, cache_dir=tmp_path, num_workers=2, max_block=8192) as loader:
        b0, s0 = _epoch(loader, 0)
        b1, s1 = _epoch(loader, 1)
    assert s0["requests"] >= 2 * N // PER_SHARD
    assert _same(b0, want[0]) and _same(b1, want[1])
    assert (s1["bytes_read"], s1["cache_hits"]) == (0, N)


def test_resume_with_cache_yields_the_same_batches(dataset: tuple[str, Path], s3rver: Any, tmp_path: Path) -> None:
    url, _ = dataset
    with _loader(url, s3rver, policy=EpochMask(N)) as plain:
        want = _epoch(plain, 1)[0]
    with _loader(url, s3rver, policy=EpochMask(N), cache_dir=tmp_path) as loader:
        _epoch(loader, 0)
        loader.set_epoch(1)
        it = iter(loader)
        first = [next(it) for _ in range(3)]
        state = loader.state_dict()
    with _loader(url, s3rver, policy=EpochMask(N), cache_dir=tmp_path, num_workers=1) as resumed:
        resumed.load_state_dict(state)
        resumed.set_epoch(1)
        rest = [np.column_stack([b["ids"].numpy(), b["weights"].numpy(), b["npy"].numpy()]) for b in resumed]
        stats = resumed.epoch_stats.as_dict()
    head = [np.column_stack([b["ids"].numpy(), b["weights"].numpy(), b["npy"].numpy()]) for b in first]
    assert _same(head + rest, want)
    assert stats["cache_hits"] > 0


def test_full_disk_degrades_to_no_cache_with_one_warning(dataset: tuple[str, Path], s3rver: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    # A fault a real disk cannot be made to give on demand: ENOSPC from pwrite.
    import shardprune.cache as cache_module

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    url, _ = dataset
    monkeypatch.setattr(cache_module.os, "pwrite", full)
    with _loader(url, s3rver, cache_dir=tmp_path) as plain, caplog.at_level(logging.WARNING, "shardprune.cache"):
        batches, stats = _epoch(plain, 0)
        _, again = _epoch(plain, 1)
    assert sum(len(b) for b in batches) == N
    warnings = [r for r in caplog.records if r.name == "shardprune.cache"]
    assert len(warnings) == 1 and "disk is full" in warnings[0].getMessage()
    assert again["cache_hits"] == 0 and again["bytes_read"] == again["bytes_kept"]


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"cache_limit": -1}, "cache_limit=-1"),
        ({"cache_limit": "lots"}, "cache_limit='lots'"),
        ({"cache_limit": "5 parsecs"}, "cache_limit='5 parsecs'"),
        ({"cache_limit": True}, "cache_limit=True"),
        ({"cache_limit": 1.5}, "cache_limit=1.5"),
        ({"cache_dir": 123}, "cache_dir=123"),
        ({"cache_dir": "s3://bucket/cache"}, "cache_dir='s3://bucket/cache'"),
    ],
)
def test_bad_arguments_name_the_value(dataset: tuple[str, Path], s3rver: Any, tmp_path: Path, kw: dict[str, Any],
                                      named: str) -> None:
    url, _ = dataset
    args = {"cache_dir": tmp_path, **kw}
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        _loader(url, s3rver, **args)


def test_cache_dir_that_is_a_file_and_limit_without_dir(dataset: tuple[str, Path], s3rver: Any,
                                                         tmp_path: Path) -> None:
    url, _ = dataset
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"cache_dir='.*f' cannot be used"):
        _loader(url, s3rver, cache_dir=tmp_path / "f")
    with pytest.raises(ConfigError, match=r"cache_limit='1GB' needs cache_dir="):
        _loader(url, s3rver, cache_limit="1GB")


def test_local_dataset_refuses_the_cache(dataset: tuple[str, Path], tmp_path: Path) -> None:
    _, local = dataset
    with pytest.raises(ConfigError, match=r"the cache is for object storage"):
        StreamingLoader(local, batch_size=10, num_epochs=1, cache_dir=tmp_path / "c")


def test_cache_limit_sizes() -> None:
    assert parse_cache_limit("20GB") == 20 * 10**9
    assert parse_cache_limit("500MiB") == 500 * 2**20
    assert parse_cache_limit("1.5k") == 1536
    assert parse_cache_limit(4096) == 4096
    assert parse_cache_limit(None) is None
    # A rewritten dataset (new manifest) gets another folder: stale bytes are never served.
    assert dataset_key("s3://b/ds", "aa") != dataset_key("s3://b/ds", "ab")


def test_open_files_stay_bounded_with_many_shards(tmp_path: Path) -> None:
    import shardprune.cache as cache_module

    cache = RangeCache(tmp_path, None, "k")
    shards = cache_module.MAX_OPEN_SHARDS * 3
    for s in range(shards):
        cache.store(s, [(s * 10, bytes([s % 256]) * 100)])
    fds = len(os.listdir("/proc/self/fd"))
    assert all(cache.lookup(s, [s * 10], [100]) == [bytes([s % 256]) * 100] for s in range(shards))
    assert len(cache._shards) == cache_module.MAX_OPEN_SHARDS
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_a_shard_evicted_by_another_process_is_a_miss_then_reread(tmp_path: Path) -> None:
    # Two handles on one folder, as two processes have: each opens its own files.
    reader, writer = RangeCache(tmp_path, None, "k"), RangeCache(tmp_path, None, "k")
    writer.store(3, [(0, b"a" * 500), (4096, b"b" * 500)])
    assert reader.lookup(3, [0, 4096], [500, 500]) == [b"a" * 500, b"b" * 500]  # the reader's files are open
    writer.drop(3)
    assert reader.lookup(3, [0, 4096], [500, 500]) == [None, None]
    writer.store(3, [(4096, b"c" * 500)])  # a new file under the same name: the reader follows it
    assert reader.lookup(3, [0, 4096], [500, 500]) == [None, b"c" * 500]
    writer.store(3, [(0, b"d" * 500)])  # appended records are seen without reopening
    assert reader.lookup(3, [0, 4096], [500, 500]) == [b"d" * 500, b"c" * 500]


def test_a_removed_cache_folder_turns_caching_off_with_one_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    cache = RangeCache(tmp_path / "c", "1MB", "k")
    cache.store(0, [(0, b"x" * 100)])
    shutil.rmtree(tmp_path / "c")
    with caplog.at_level(logging.WARNING, "shardprune.cache"):
        cache.store(1, [(0, b"y" * 100)])
        cache.store(2, [(0, b"z" * 100)])
        assert cache.lookup(0, [0], [100]) == [None] and cache.lookup(1, [0], [100]) == [None]
    assert len([r for r in caplog.records if r.name == "shardprune.cache"]) == 1
