"""The I/O planner's cost model, request splitting and array form (rules of loader/ioplan.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardprune.costmodel import REMOTE, CostModel
from shardprune.errors import ConfigError
from shardprune.loader.ioplan import ReadPlan, plan_reads, summarize


def _layout(n: int, size: int, shards: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    shard = np.repeat(np.arange(shards), -(-n // shards))[:n].astype(np.int64)
    length = np.full(n, size, dtype=np.int64)
    offset = np.zeros(n, dtype=np.int64)
    for s in range(shards):
        idx = np.flatnonzero(shard == s)
        offset[idx] = np.arange(idx.size) * size
    return shard, offset, length


def test_cost_model_numbers() -> None:
    assert REMOTE.break_even_gap == 1_000_000  # 20 ms at 50 MB/s
    assert REMOTE.request_bytes(4 << 20) == 1_000_000
    assert CostModel(0.001, 1e6).request_bytes(4 << 20) == 64 * 1024  # never below 64 KiB
    assert REMOTE.request_bytes(100_000) == 100_000  # never above max_block
    assert REMOTE.seconds(10, 50_000_000, in_flight=2) == pytest.approx((0.2 + 1.0) / 2)
    with pytest.raises(ConfigError, match=r"latency_s=0 must be a finite number in \(0, 60\]"):
        CostModel(latency_s=0)


@pytest.mark.parametrize("size", [4096, 32768, 110 * 1024])
@pytest.mark.parametrize("r", [0.3, 0.5, 0.7])
def test_default_remote_planning_reads_at_most_budget_beyond_kept_bytes(size: int, r: float) -> None:
    # Issue 13: with the old max_gap of 16 KiB, 4 KiB samples at r = 0.5 read 1.97x the kept bytes.
    n = 20_000
    shard, offset, length = _layout(n, size, shards=4)
    ids = np.flatnonzero(np.random.default_rng(0).random(n) >= r)
    plan = plan_reads(np.arange(ids.size), ids, shard, offset, length, max_gap=0, max_block=4 << 20,
                      gap_budget=0.1, cost=REMOTE)
    s = summarize(plan)
    assert s.sample_bytes == ids.size * size
    assert s.bytes_read <= 1.1 * s.sample_bytes
    # The budget was spent on the smallest gaps: fewer requests than without it.
    plain = summarize(plan_reads(np.arange(ids.size), ids, shard, offset, length, max_gap=0, max_block=4 << 20,
                                 cost=REMOTE))
    assert plain.gap_bytes == 0 and s.requests < plain.requests


def test_budget_skips_gaps_above_break_even() -> None:
    # Two samples 2 MB apart: reading the gap (40 ms at 50 MB/s) costs more than a request (20 ms).
    shard = np.zeros(3, dtype=np.int64)
    offset = np.array([0, 100, 2_000_100], dtype=np.int64)
    length = np.array([100, 100, 100], dtype=np.int64)
    ids = np.array([0, 2])
    wide = plan_reads(np.arange(2), ids, shard, offset, length, max_gap=0, max_block=8 << 20, gap_budget=1e6)
    assert summarize(wide).requests == 1  # no cost model: the budget alone decides
    costed = plan_reads(np.arange(2), ids, shard, offset, length, max_gap=0, max_block=8 << 20, gap_budget=1e6,
                        cost=REMOTE)
    assert summarize(costed).requests == 2 and summarize(costed).gap_bytes == 0


def test_large_runs_split_into_requests_in_flight() -> None:
    shard, offset, length = _layout(1000, 10_000)  # 10 MB, contiguous
    ids = np.arange(1000)
    plan = plan_reads(np.arange(1000), ids, shard, offset, length, max_gap=0, max_block=4_000_000, cost=REMOTE)
    # Requests of at most 1 MB (100 samples), units of at most 4 MB (4 requests).
    assert plan.req_length.tolist() == [1_000_000] * 10
    assert [u.requests for u in plan] == [4, 4, 2] and [u.nbytes for u in plan] == [4_000_000] * 2 + [2_000_000]
    # Without a cost model a run is one request per unit, as before.
    plain = plan_reads(np.arange(1000), ids, shard, offset, length, max_gap=0, max_block=4_000_000)
    assert plain.req_length.tolist() == [4_000_000, 4_000_000, 2_000_000]


def test_units_are_made_on_demand_and_pickle_small() -> None:
    n = 200_000
    shard, offset, length = _layout(n, 4096, shards=10)
    ids = np.flatnonzero(np.random.default_rng(1).random(n) >= 0.5)
    plan = plan_reads(np.arange(ids.size), ids, shard, offset, length, max_gap=0, max_block=1 << 20,
                      gap_budget=0.1, cost=REMOTE)
    assert isinstance(plan, ReadPlan) and len(plan) > 100
    unit = plan[7]
    assert unit.index == 7 and plan[-1].index == len(plan) - 1
    assert len(pickle.dumps(unit)) < 4 * unit.slots.nbytes + 4096  # its own slices only
    assert summarize(list(plan)) == summarize(plan)
    with pytest.raises(IndexError, match="outside"):
        plan[len(plan)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    keep_frac=st.floats(0.05, 1.0),
    max_block=st.sampled_from([1, 700, 3000, 1 << 20]),
    max_request=st.sampled_from([None, 1, 500, 2000]),
    latency=st.sampled_from([1e-6, 1e-5, 1e-3]),
    gap_budget=st.sampled_from([0.0, 0.1, 1.0]),
    seed=st.integers(0, 1000),
)
def test_requests_and_units_respect_their_caps(
    n: int, keep_frac: float, max_block: int, max_request: int | None, latency: float, gap_budget: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    shard = np.sort(rng.integers(0, 3, n))
    length = rng.integers(1, 900, n).astype(np.int64)
    offset = np.zeros(n, dtype=np.int64)
    for s in range(3):
        idx = np.flatnonzero(shard == s)
        offset[idx] = np.cumsum(np.r_[0, length[idx][:-1]])
    ids = np.flatnonzero(rng.random(n) < keep_frac)
    cost = CostModel(latency_s=latency, bandwidth=1e8)
    plan = plan_reads(np.arange(ids.size), ids, shard, offset, length, max_gap=0, max_block=max_block,
                      gap_budget=gap_budget, cost=cost, max_request=max_request)
    cap = min(max_block, max_request if max_request is not None else cost.request_bytes(max_block))
    served = []
    for u in plan:
        assert u.requests == 1 or u.nbytes <= max_block
        for b in u.blocks:
            assert len(b.slots) == 1 or b.length <= cap
            for i, start, ln in zip(b.ids, b.starts, b.lengths):
                assert b.shard == shard[i] and b.offset + start == offset[i] and ln == length[i]
            served.extend(b.slots)
    assert served == list(range(ids.size))
    s = summarize(plan)
    assert s.gap_bytes <= gap_budget * s.sample_bytes
    gaps = offset[ids][1:] - (offset[ids] + length[ids])[:-1]
    bridged_too_big = gaps >= cost.break_even_gap
    if bridged_too_big.any():
        # No request reads through a gap at or above the break-even gap.
        for u in plan:
            for b in u.blocks:
                inner = np.diff(np.array(b.starts)) - np.array(b.lengths[:-1])
                assert np.all(inner < cost.break_even_gap)


def test_loader_plans_with_the_storage_cost_model(tmp_path: Path) -> None:
    from loader_data import write_dataset

    from shardprune.dataset import open_dataset
    from shardprune.loader import StreamingLoader
    from shardprune.storage import Storage

    write_dataset(tmp_path / "ds", n=300, per_shard=300)
    plain = StreamingLoader(tmp_path / "ds", batch_size=10, num_epochs=1, decode=False)
    assert plain.dataset.storage.cost is None  # local: no cost model, one request per unit
    # A cost model whose request size is 64 KiB splits the one 300-sample run into more requests.
    costed_storage = Storage(tmp_path / "ds", cost=CostModel(latency_s=1e-3, bandwidth=1e6))
    costed = StreamingLoader(open_dataset(costed_storage), batch_size=10, num_epochs=1, decode=False)
    plain.set_epoch(0)
    costed.set_epoch(0)
    a, b = summarize(plain.read_units()), summarize(costed.read_units())
    assert a.bytes_read == b.bytes_read and a.samples == b.samples == 300
    assert a.requests == 1
    costed_plan = costed.read_units()
    assert b.requests > 1 and all(n <= 64 * 1024 for n in costed_plan.req_length.tolist())
    assert int(costed_plan.req_length[:-1].min()) > 64 * 1024 - 2048  # full requests, cut at sample boundaries
    got = [int(i) for batch in costed for i in batch["ids"]]
    assert sorted(got) == list(range(300))
