"""Exact mid-epoch resume: stop at every batch, resume in a new loader, compare the rest exactly.

The harness follows torchdata's ``run_test_save_load_state``: an uninterrupted reference
run, then for each stop point a run that takes ``k`` batches, saves ``state_dict()``
(through JSON, as a checkpoint would), builds a *new* loader, loads the state and takes
the rest. The rest must equal the reference's batches ``k..`` in ids, order, weights,
Mixup draws and blended values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loader_data import SeenStore, as_float, write_dataset
from shardprune.errors import CheckpointMismatchError
from shardprune.loader import StreamingLoader, summarize
from shardprune.policies import make_policy

KEYS = ("ids", "weights", "mixed", "mix_partner", "mix_lambda", "npy", "target")


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "ds"
    write_dataset(root, n=160, per_shard=20)
    return root


def _make(ds: Path, **kw: Any) -> StreamingLoader:
    args: dict[str, Any] = dict(
        batch_size=8,
        num_epochs=4,
        seed=11,
        policy=make_policy("swdpp", prune_ratio=0.4, mixup_prob=0.5),
        store=SeenStore(n=160),
        shuffle_buffer=24,
        shuffle_window=3,
        drop_last=False,
        world=None,
    )
    args.update(kw)
    return StreamingLoader(ds, **args)


def _arrays(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: batch[k].numpy().copy() for k in KEYS if isinstance(batch.get(k), torch.Tensor)}


def _equal(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def _check_resume(ds: Path, epoch: int, stops: list[int] | None = None, **kw: Any) -> int:
    """Compare resumed runs with the reference at ``stops`` (default: every batch boundary)."""
    with _make(ds, **kw) as ref:
        ref.set_epoch(epoch)
        full = [_arrays(b) for b in ref]
        assert len(full) == len(ref)
    if stops is None:
        stops = list(range(len(full) + 1))
    assert any(b["mixed"].any() for b in full)  # Mixup really happens in this configuration
    for k in stops:
        with _make(ds, **kw) as first:
            first.set_epoch(epoch)
            it = iter(first)
            head = [_arrays(next(it)) for _ in range(k)]
            state = json.loads(json.dumps(first.state_dict()))
            del it
        assert _equal(head, full[:k])
        assert state["batches_yielded"] == k and state["epoch"] == epoch
        with _make(ds, **kw) as second:
            second.load_state_dict(state)
            if k == len(full):
                # A finished epoch is not served again by iter() alone (it moves on, tested
                # below); the explicit loop's set_epoch of the same epoch keeps the position.
                second.set_epoch(epoch)
            remaining = summarize(second.read_units(k))
            rest = [_arrays(b) for b in second]
            assert second.epoch_stats.batches == len(full)
            # A resumed epoch reads only what the remaining batches need.
            assert second.epoch_stats.bytes_read == remaining.bytes_read
            assert remaining.samples == sum(len(b["ids"]) for b in rest)
        assert _equal(rest, full[k:]), f"resume after batch {k} of epoch {epoch} differs"
    return len(full)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_resume_at_every_batch_in_process(ds: Path, epoch: int) -> None:
    assert _check_resume(ds, epoch) >= 10


@pytest.mark.parametrize("shuffle", ["window", "block", "global"])
def test_resume_at_every_batch_for_every_shuffle_mode(ds: Path, shuffle: str) -> None:
    assert _check_resume(ds, 1, shuffle=shuffle, shuffle_block=3) >= 10


def test_resume_with_workers_and_transform(ds: Path) -> None:
    # Worker pipelines are rebuilt per resume (new processes), so a sample of stop points.
    # Epoch 1 has 11 batches here: stop at its start, inside it and at its end.
    assert _check_resume(ds, 1, [0, 1, 5, 9, 11], num_workers=2, transform=as_float, prefetch_batches=3) == 11


def test_resume_drop_last_multi_rank(ds: Path) -> None:
    from shardprune.dist.world import World

    for rank in (0, 2):
        assert _check_resume(ds, 0, world=World(rank, 3), drop_last=True) == 4


def test_resume_then_next_epoch_matches(ds: Path) -> None:
    with _make(ds) as ref:
        ref.set_epoch(2)
        list(ref)
        ref.set_epoch(3)
        expected = [_arrays(b) for b in ref]
    with _make(ds) as a:
        a.set_epoch(2)
        it = iter(a)
        next(it)
        state = a.state_dict()
    with _make(ds) as b:
        b.load_state_dict(state)
        list(b)
        b.set_epoch(3)
        assert _equal([_arrays(x) for x in b], expected)
    # The usual loop calls set_epoch for the resumed epoch too: it continues, it does not replay.
    with _make(ds) as ref2:
        ref2.set_epoch(2)
        rest_of_2 = [_arrays(x) for x in ref2][1:]
    with _make(ds) as c:
        c.load_state_dict(state)
        got: list[list[dict[str, np.ndarray]]] = []
        for epoch in range(state["epoch"], 4):
            c.set_epoch(epoch)
            got.append([_arrays(x) for x in c])
        assert _equal(got[0], rest_of_2) and _equal(got[1], expected)
        c.set_epoch(2)  # once the resumed pass ran, set_epoch plans the whole epoch again
        assert len(c) == sum(1 for _ in c) == len(rest_of_2) + 1


def test_mismatched_checkpoint_is_refused_showing_both(ds: Path) -> None:
    with _make(ds) as a:
        a.set_epoch(1)
        it = iter(a)
        next(it)
        state = a.state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"seed: 11 \(in checkpoint\) vs 12 \(now\)"):
        _make(ds, seed=12).load_state_dict(state)
    with pytest.raises(CheckpointMismatchError, match=r"batch_size: 8 \(in checkpoint\) vs 9 \(now\)"):
        _make(ds, batch_size=9).load_state_dict(state)
    with pytest.raises(CheckpointMismatchError, match=r"policy: .*'prune_ratio': 0.4.* \(in checkpoint\) vs .*0.3"):
        _make(ds, policy=make_policy("swdpp", prune_ratio=0.3, mixup_prob=0.5)).load_state_dict(state)
    moved = SeenStore(n=160)
    moved.bump()  # training changed the scores, and the store was not restored
    want = state["snapshot_fingerprint"]
    now = moved.snapshot().fingerprint
    with pytest.raises(CheckpointMismatchError, match=rf"score snapshot {want} \(in checkpoint\) vs {now} \(now\)"):
        _make(ds, store=moved).load_state_dict(state)
    bad = dict(state, batches_yielded=10_000)
    with pytest.raises(CheckpointMismatchError, match=r"batches_yielded=10000 \(in checkpoint\) is outside 0\.\."):
        _make(ds).load_state_dict(bad)
    with pytest.raises(CheckpointMismatchError, match=r"version 99 \(in checkpoint\) vs 2 \(now\)"):
        _make(ds).load_state_dict(dict(state, version=99))


def test_another_ranks_state_resumes_this_ranks_share_at_the_same_position(ds: Path) -> None:
    """Accelerate and Lightning save one process's loader state and load it on every rank: rank 1
    given rank 0's state resumes exactly as with its own (all ranks yield equal batch counts)."""
    from shardprune.dist.world import World

    def position(rank: int, after: int) -> dict[str, Any]:
        with _make(ds, world=World(rank, 2), drop_last=True) as loader:
            loader.set_epoch(1)
            it = iter(loader)
            for _ in range(after):
                next(it)
            return loader.state_dict()

    def rest(state: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        with _make(ds, world=World(1, 2), drop_last=True) as loader:
            loader.load_state_dict(state)
            return [_arrays(b) for b in loader]

    total = len(rest(position(1, 0)))
    for after in (0, 3, total - 1):
        own, other = position(1, after), position(0, after)
        assert own["config"]["rank"] == 1 and other["config"]["rank"] == 0
        expected = rest(own)
        assert len(expected) == total - after
        assert _equal(rest(other), expected), after
    # Another world size is still refused.
    with _make(ds, world=World(1, 3), drop_last=True) as loader, pytest.raises(CheckpointMismatchError,
                                                                              match="world_size: 2"):
        loader.load_state_dict(position(0, 3))
