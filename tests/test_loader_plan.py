"""The epoch plan and the I/O planner as pure functions: golden order, rank split, pad/trim, merging."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardprune.errors import ConfigError
from shardprune.loader.ioplan import plan_reads, summarize
from shardprune.loader.plan import PlanConfig, make_plan
from shardprune.loader.shuffle import SHUFFLES


def _layout(n: int, shards: int, size: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples spread over ``shards`` shards in order, back to back, ``size`` bytes each."""
    shard = (np.arange(n) * shards // max(n, 1)).astype(np.int64)
    offset = np.zeros(n, dtype=np.int64)
    for s in range(shards):
        idx = np.flatnonzero(shard == s)
        offset[idx] = np.arange(idx.size) * size
    return shard, offset, np.full(n, size, dtype=np.int64)


def _tiny_plan(rank: int, world: int, epoch: int, shuffle: str = "window") -> list[int]:
    n = 40
    shard, offset, _ = _layout(n, 4)
    keep = np.ones(n, dtype=bool)
    keep[::5] = False
    cfg = PlanConfig(seed=7, batch_size=4, rank=rank, world_size=world, shuffle_window=2, shuffle_buffer=8,
                     shuffle=shuffle, shuffle_block=3)
    return [int(i) for i in make_plan(keep, np.ones(n, np.float32), shard, offset, 4, cfg, epoch).ids()]


def test_golden_order() -> None:
    # A change here means every user's sample order changed: bump the state version and say so.
    assert _tiny_plan(0, 2, 0) == [1, 22, 24, 6, 4, 9, 2, 23, 7, 21, 8, 26, 29, 3, 27, 28]
    assert _tiny_plan(1, 2, 0) == [32, 31, 12, 34, 13, 11, 37, 36, 39, 17, 33, 16, 38, 19, 14, 18]
    assert _tiny_plan(0, 1, 1)[:12] == [32, 22, 23, 27, 26, 31, 33, 34, 28, 38, 24, 37]
    # The modes added with issue 12 (new orders, nothing changed for "window").
    assert _tiny_plan(0, 2, 0, "global") == GOLDEN_GLOBAL
    assert _tiny_plan(0, 2, 0, "block") == GOLDEN_BLOCK


GOLDEN_GLOBAL = [21, 31, 28, 11, 3, 32, 6, 1, 29, 24, 17, 27, 22, 19, 8, 37]
GOLDEN_BLOCK = [14, 1, 3, 8, 28, 26, 16, 2, 9, 29, 24, 27, 13, 17, 11, 12]


def test_plan_is_a_pure_function_of_its_inputs() -> None:
    n = 200
    shard, offset, _ = _layout(n, 8)
    keep = np.random.default_rng(0).random(n) < 0.6
    w = np.linspace(1, 2, n).astype(np.float32)
    cfg = PlanConfig(seed=3, batch_size=8, shuffle_window=3, shuffle_buffer=16)
    a = make_plan(keep, w, shard, offset, 8, cfg, 2)
    b = make_plan(keep.copy(), w.copy(), shard.copy(), offset.copy(), 8, cfg, 2)
    assert np.array_equal(a.ids(), b.ids()) and a.fingerprint() == b.fingerprint()
    for other in (
        make_plan(keep, w, shard, offset, 8, cfg, 3),
        make_plan(keep, w, shard, offset, 8, PlanConfig(seed=4, batch_size=8, shuffle_window=3, shuffle_buffer=16), 2),
    ):
        assert not np.array_equal(a.ids(), other.ids())
        assert sorted(a.slot_ids.tolist()) == sorted(other.slot_ids.tolist())  # same kept set, trims aside


@settings(max_examples=120, deadline=None)
@given(
    n=st.integers(0, 300),
    shards=st.integers(1, 9),
    world=st.integers(1, 6),
    batch=st.integers(1, 17),
    window=st.integers(1, 5),
    buffer=st.integers(1, 40),
    drop_last=st.booleans(),
    keep_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**40),
    mode=st.sampled_from(sorted(SHUFFLES)),
    block=st.integers(1, 6),
)
def test_ranks_disjoint_cover_kept_equal_batches(
    n: int, shards: int, world: int, batch: int, window: int, buffer: int, drop_last: bool, keep_frac: float, seed: int,
    mode: str, block: int,
) -> None:
    shard, offset, _ = _layout(n, shards)
    keep = np.random.default_rng(seed).random(n) < keep_frac
    weights = np.random.default_rng(seed + 1).random(n).astype(np.float32) + 1
    kept = set(np.flatnonzero(keep).tolist())
    total = len(kept)
    plans = [
        make_plan(
            keep, weights, shard, offset, shards,
            PlanConfig(seed=seed, batch_size=batch, rank=r, world_size=world, shuffle_window=window,
                       shuffle_buffer=buffer, drop_last=drop_last, shuffle=mode, shuffle_block=block),
            epoch=1,
        )
        for r in range(world)
    ]
    assert len({p.num_batches for p in plans}) == 1 and len({p.num_samples for p in plans}) == 1
    real: list[int] = []  # yielded or trimmed non-pad samples of every rank
    for p in plans:
        ids = p.ids()
        assert len(set(ids[~p.slot_padded[p.order]].tolist())) == int((~p.slot_padded[p.order]).sum())
        assert set(ids.tolist()) <= kept
        # Every slot of the rank is yielded once or trimmed, never both.
        assert len(set(p.order.tolist())) == p.num_samples
        real.extend(p.slot_ids[~p.slot_padded].tolist())
        # Pads carry weight 0; real slots the policy's weight.
        assert np.all(p.slot_weights[p.slot_padded] == 0)
        assert np.array_equal(p.slot_weights[~p.slot_padded], weights[p.slot_ids[~p.slot_padded]])
        # The shuffle buffer bounds how far ahead of its yield a sample is read.
        assert np.all(p.order[: p.num_samples - p.padded] <= np.arange(p.num_samples - p.padded) + buffer - 1)
        assert p.kept_total == total
    # Ranks are disjoint and their union is the kept set.
    assert len(real) == len(set(real)) and set(real) == kept
    if drop_last:
        assert plans[0].num_batches == (total // world) // batch
        assert all(p.num_samples == p.num_batches * batch for p in plans)
        assert sum(p.trimmed for p in plans) == total - world * plans[0].num_samples
        assert all(p.padded == 0 for p in plans)
    else:
        per_rank = -(-total // world)
        assert all(p.num_samples == per_rank for p in plans)
        assert plans[0].num_batches == -(-per_rank // batch)
        assert sum(p.padded for p in plans) == world * per_rank - total
        assert all(p.trimmed == 0 for p in plans)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 200),
    shards=st.integers(1, 5),
    keep_frac=st.floats(0.05, 1.0),
    max_gap=st.sampled_from([0, 1, 100, 5000]),
    max_block=st.sampled_from([1, 700, 3000, 1 << 20]),
    gap_budget=st.sampled_from([0.0, 0.1, 0.5, 3.0]),
    seed=st.integers(0, 1000),
)
def test_plan_reads_serves_each_slot_once(
    n: int, shards: int, keep_frac: float, max_gap: int, max_block: int, gap_budget: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shard = np.sort(rng.integers(0, shards, n))
    length = rng.integers(1, 900, n).astype(np.int64)
    offset = np.zeros(n, dtype=np.int64)
    for s in range(shards):
        idx = np.flatnonzero(shard == s)
        offset[idx] = np.cumsum(np.r_[0, length[idx][:-1]])
    keep = rng.random(n) < keep_frac
    ids = np.flatnonzero(keep)
    slots = np.arange(ids.size)
    units = plan_reads(slots, ids, shard, offset, length, max_gap=max_gap, max_block=max_block, gap_budget=gap_budget)
    served = [s for u in units for b in u.blocks for s in b.slots]
    assert served == slots.tolist()
    for u in units:
        for b in u.blocks:
            assert len(b.slots) == 1 or b.length <= max_block
            for i, start, ln in zip(b.ids, b.starts, b.lengths):
                assert b.shard == shard[i] and b.offset + start == offset[i] and ln == length[i]
                assert 0 <= start and start + ln <= b.length
    total = summarize(units)
    assert total.sample_bytes == int(length[ids].sum()) and total.samples == ids.size
    assert total.bytes_read == total.sample_bytes + total.gap_bytes
    if max_gap == 0:
        # Only the budget bridges gaps, and never beyond it.
        assert total.gap_bytes <= gap_budget * total.sample_bytes
        assert gap_budget > 0 or total.gap_bytes == 0
    if gap_budget > 0:
        plain = summarize(plan_reads(slots, ids, shard, offset, length, max_gap=max_gap, max_block=max_block))
        assert total.requests <= plain.requests and total.gap_bytes >= plain.gap_bytes
    if max_block >= 1 << 20 and ids.size and gap_budget == 0:
        # Without a block cap, a request ends exactly where the shard changes or a gap exceeds max_gap.
        gaps = offset[ids][1:] - (offset[ids] + length[ids])[:-1]
        breaks = (shard[ids][1:] != shard[ids][:-1]) | (gaps > max_gap)
        assert total.requests == 1 + int(breaks.sum())


def test_adjacent_samples_merge_and_gaps_are_counted() -> None:
    shard = np.zeros(6, dtype=np.int64)
    length = np.full(6, 100, dtype=np.int64)
    offset = np.arange(6, dtype=np.int64) * 100
    ids = np.array([0, 1, 3, 5])
    exact = summarize(plan_reads(np.arange(4), ids, shard, offset, length, max_gap=0, max_block=1 << 20))
    assert (exact.requests, exact.bytes_read, exact.gap_bytes) == (3, 400, 0)
    merged = summarize(plan_reads(np.arange(4), ids, shard, offset, length, max_gap=100, max_block=1 << 20))
    assert (merged.requests, merged.bytes_read, merged.gap_bytes) == (1, 600, 200)
    capped = summarize(plan_reads(np.arange(4), ids, shard, offset, length, max_gap=100, max_block=250))
    assert capped.requests == 3 and capped.bytes_read == 400
    # A budget of 100/400 of the planned bytes bridges one 100-byte gap (the first: ties by position).
    budget = plan_reads(np.arange(4), ids, shard, offset, length, max_gap=0, max_block=1 << 20, gap_budget=0.25)
    assert [(b.offset, b.length) for u in budget for b in u.blocks] == [(0, 400), (500, 100)]
    assert summarize(budget).gap_bytes == 100


def test_bad_plan_arguments() -> None:
    with pytest.raises(ConfigError, match=r"batch_size=0 must be an int >= 1"):
        PlanConfig(seed=0, batch_size=0)
    with pytest.raises(ConfigError, match=r"rank=3 must be an int in \[0, 1\]"):
        PlanConfig(seed=0, batch_size=1, rank=3, world_size=2)
    with pytest.raises(ConfigError, match=r"max_gap=-1 must be an int >= 0"):
        plan_reads(np.arange(1), np.arange(1), np.zeros(1, int), np.zeros(1, int), np.ones(1, int), max_gap=-1,
                   max_block=1)
    with pytest.raises(ConfigError, match="lengths differ: 3, 2"):
        make_plan(np.ones(3, bool), np.ones(2), np.zeros(3, int), np.zeros(3, int), 1, PlanConfig(0, 1), 0)
