"""Shuffle modes: the vectorised buffer against the sequential rule, bijections, blocks, read order."""

from __future__ import annotations

import numpy as np
import pytest

from shardprune.errors import ConfigError
from shardprune.loader.ioplan import plan_reads, summarize
from shardprune.loader.plan import PlanConfig, make_plan
from shardprune.loader.shuffle import PURPOSE_GLOBAL, buffer_shuffle, get_shuffle
from shardprune.policies.rng import philox


def _loop_buffer(n: int, buffer: int, gen: np.random.Generator) -> list[int]:
    """The sequential shuffle-buffer rule, one slot at a time (the reference)."""
    if buffer <= 1 or n <= 1:
        return list(range(n))
    draws = gen.integers(0, buffer, size=max(n - buffer, 0)).tolist()
    buf = list(range(min(buffer, n)))
    out: list[int] = []
    for s, j in zip(range(len(buf), n), draws):
        out.append(buf[j])
        buf[j] = s
    out.extend(buf[k] for k in gen.permutation(len(buf)).tolist())
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 100, 1000])
@pytest.mark.parametrize("buffer", [1, 2, 8, 64, 2000])
def test_vectorised_buffer_equals_the_sequential_rule(n: int, buffer: int) -> None:
    for seed in range(3):
        a, b = philox(seed, 9, n), philox(seed, 9, n)
        assert buffer_shuffle(n, buffer, a).tolist() == _loop_buffer(n, buffer, b)
        assert a.integers(0, 2**62) == b.integers(0, 2**62)  # the stream is consumed identically


def _flat(n: int, shards: int) -> tuple[np.ndarray, np.ndarray]:
    shard = (np.arange(n) * shards // n).astype(np.int64)
    starts = np.searchsorted(shard, np.arange(shards))
    return shard, (np.arange(n) - starts[shard]) * 100


@pytest.mark.parametrize("k", [4, 10, 16])
@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("mode", ["global", "block", "window"])
def test_every_kept_sample_once_at_power_of_two_lengths(k: int, delta: int, mode: str) -> None:
    n = 2**k + delta
    shard, offset = _flat(n, 7)
    keep = np.ones(n, dtype=bool)
    cfg = dict(seed=5, batch_size=3, world_size=3, drop_last=False, shuffle=mode, shuffle_buffer=32)
    plans = [make_plan(keep, np.ones(n, np.float32), shard, offset, 7, PlanConfig(rank=r, **cfg), 2) for r in range(3)]
    real = np.concatenate([p.slot_ids[~p.slot_padded] for p in plans])
    assert np.array_equal(np.sort(real), np.arange(n))


@pytest.mark.parametrize("manifest_in_file_order", [True, False])
def test_global_yields_the_philox_permutation_and_reads_chunks_in_file_order(manifest_in_file_order: bool) -> None:
    n, shards, buffer = 1000, 4, 64
    shard, offset = _flat(n, shards)
    if not manifest_in_file_order:  # ids unrelated to file positions (e.g. an index of foreign tars)
        mix = np.random.default_rng(1).permutation(n)
        shard, offset = shard[mix], offset[mix]
    keep = np.arange(n) % 3 != 0
    kept = np.flatnonzero(keep)
    cfg = PlanConfig(seed=11, batch_size=10, shuffle="global", shuffle_buffer=buffer, drop_last=False)
    plan = make_plan(keep, np.ones(n, np.float32), shard, offset, shards, cfg, 4)
    assert plan.ids().tolist() == kept[philox(11, PURPOSE_GLOBAL, 4).permutation(kept.size)].tolist()
    for c in range(0, plan.num_samples, buffer):
        ids = plan.slot_ids[c : c + buffer]  # slots are in read order
        assert sorted(ids.tolist(), key=lambda i: (shard[i], offset[i])) == ids.tolist()
        assert set(ids.tolist()) == set(plan.ids()[c : c + buffer].tolist())


def test_global_merges_adjacent_samples_of_a_chunk() -> None:
    # Everything kept and one chunk: the read order is file order, one request per shard.
    n, shards = 120, 3
    shard, offset = _flat(n, shards)
    length = np.full(n, 100, dtype=np.int64)
    cfg = PlanConfig(seed=0, batch_size=8, shuffle="global", shuffle_buffer=n)
    plan = make_plan(np.ones(n, bool), np.ones(n, np.float32), shard, offset, shards, cfg, 0)
    slots = np.sort(plan.order)
    io = summarize(plan_reads(slots, plan.slot_ids[slots], shard, offset, length, max_gap=0, max_block=1 << 20))
    assert (io.requests, io.bytes_read, io.gap_bytes) == (3, n * 100, 0)


def test_block_mode_keeps_blocks_of_adjacent_samples_together() -> None:
    n, shards, block = 40, 4, 3
    shard, offset = _flat(n, shards)
    length = np.full(n, 100, dtype=np.int64)
    cfg = PlanConfig(seed=2, batch_size=4, shuffle="block", shuffle_block=block, shuffle_buffer=1)
    plan = make_plan(np.ones(n, bool), np.ones(n, np.float32), shard, offset, shards, cfg, 0)
    ids = plan.ids()
    # Cut the yield order where the next sample is not the next one on disk: runs are blocks.
    cuts = np.flatnonzero(np.diff(ids) != 1) + 1
    runs = [len(r) for r in np.split(ids, cuts)]
    assert sorted(runs) == sorted([3, 3, 3, 1] * shards)  # ceil(10 / 3) blocks per shard
    assert ids.tolist() != sorted(ids.tolist())
    slots = np.sort(plan.order)
    io = summarize(plan_reads(slots, plan.slot_ids[slots], shard, offset, length, max_gap=0, max_block=1 << 20))
    assert io.requests == 16 and io.gap_bytes == 0


def test_unknown_shuffle_mode_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"shuffle='uniform' is not one of block, global, window"):
        PlanConfig(seed=0, batch_size=1, shuffle="uniform")
    with pytest.raises(ConfigError, match=r"shuffle='x' is not one of block, global, window; pass one"):
        get_shuffle("x")
    with pytest.raises(ConfigError, match=r"shuffle_block=0 must be an int >= 1"):
        PlanConfig(seed=0, batch_size=1, shuffle_block=0)
