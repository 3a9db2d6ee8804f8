"""Score synchronisation across real gloo ranks (spawned processes on 127.0.0.1 via a FileStore).

Checked with 2 and 4 ranks: ids above 2**24 survive the exchange as int64; every epoch's
plan is the same on every rank, the ranks' ids are disjoint and cover exactly the kept
set, every rank runs the same number of steps, and after every epoch all ranks hold the
same scores as one ScoreStore fed the same (id, loss) reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from dist_workers import errors, fake_losses, launch
from loader_data import write_dataset

from shardprune.dataset import open_dataset
from shardprune.dist import DistributedScores
from shardprune.errors import DistributedError
from shardprune.policies import make_policy
from shardprune.scores import ScoreStore

N = 300


def _results(out: Path, world: int) -> list[dict[str, Any]]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("world", [2, 4])
def test_exchange_keeps_int64_ids_above_2_pow_24(tmp_path: Path, world: int) -> None:
    codes = launch("exchange", world, tmp_path, store=str(tmp_path / "scores"))
    out = tmp_path / f"out-exchange-{world}"
    assert codes == [0] * world, errors(out)
    big = [2**24 + 1, 2**40 + 3, 2**62 + 5, 2**53 + 1]
    expect_ids: list[int] = []
    expect_losses: list[float] = []
    for r in range(world):
        sent = [b + (r if i == 2 else 0) for i, b in enumerate(big)][: 1 + r % 4] + [r]
        expect_ids += sent
        expect_losses += [k + 0.25 + r for k in range(len(sent))]
    for doc in _results(out, world):
        assert doc["dtype"] == "int64"
        assert doc["ids"] == expect_ids  # exact: fp32 would turn 2**24 + 1 into 2**24
        assert doc["counts"] == [2 + r % 4 for r in range(world)]
        assert doc["losses"] == pytest.approx(expect_losses)
        assert "float32" in doc["refused"] and "2**24" in doc["refused"]
        # Headers and reports in one message once every rank knows the capacity.
        assert [h["collectives"] for h in doc["headed"]] == [2, 1]
        assert all(h["same"] and h["tags"] == [10 + r for r in range(world)] for h in doc["headed"])
        assert doc["capacity"] == max(2 + r % 4 for r in range(world))
    docs = _results(out, world)
    # Rank 1 fed its copy behind DistributedScores' back: every rank refuses the snapshot.
    assert all("ranks [1] froze a different score snapshot" in d["diverged"] for d in docs)
    # Rank 0 cannot open the store (another sample count): it raises its error, the others theirs.
    assert docs[0]["open_error"].startswith("mismatch:") and "num_samples=100" in docs[0]["open_error"]
    assert all(d["open_error"].startswith("distributed: rank(s) [0] could not open") for d in docs[1:])
    assert float(np.float32(2**24 + 1)) != 2**24 + 1  # the hazard the exchange avoids


def _reference_run(
    data: str, store_dir: Path, ranks: list[dict[str, Any]], num_epochs: int, batch_size: int
) -> list[str]:
    """One process fed every rank's reports: the snapshot each epoch was planned from, and the end.

    The loader freezes epoch e+1's scores when batch ``ahead_trigger(n)`` of epoch e is
    requested (shardprune.loader.ahead), so that snapshot lacks every rank's last batches.
    """
    from shardprune.loader.ahead import DEFAULT_PLAN_AHEAD, ahead_trigger

    ds = open_dataset(data)
    prints = []
    tails: list[np.ndarray] = []
    with ScoreStore(store_dir, len(ds), ds.fingerprint, flush_interval_s=None) as store:
        for e in range(num_epochs):
            prints.append(store.snapshot().fingerprint)
            for tail in tails:
                store.apply(tail, fake_losses(tail, e - 1), e - 1)
            parts = [np.asarray(doc["epochs"][e]["ids"], dtype=np.int64) for doc in ranks]
            cut = ahead_trigger(ranks[0]["epochs"][e]["batches"], DEFAULT_PLAN_AHEAD) * batch_size
            head = np.concatenate([p[:cut] for p in parts])
            tails = [p[cut:] for p in parts]
            store.apply(head, fake_losses(head, e), e)
        for tail in tails:
            store.apply(tail, fake_losses(tail, num_epochs - 1), num_epochs - 1)
        prints.append(store.snapshot().fingerprint)
    return prints


@pytest.mark.parametrize(
    ("world", "drop_last", "sync_every"),
    [(2, False, 8), (4, True, None), (4, False, 5)],
    ids=["2ranks-pad-sync-each-step", "4ranks-trim-sync-at-epoch", "4ranks-pad-sync-mid-step"],
)
def test_ranks_share_one_score_state(tmp_path: Path, world: int, drop_last: bool, sync_every: int | None) -> None:
    data = str(tmp_path / "ds")
    write_dataset(data, n=N, per_shard=25)
    num_epochs = 4
    codes = launch(
        "epochs",
        world,
        tmp_path,
        data=data,
        store=str(tmp_path / "scores"),
        num_epochs=num_epochs,
        batch_size=8,
        drop_last=drop_last,
        sync_every=sync_every,
    )
    out = tmp_path / f"out-epochs-{world}"
    assert codes == [0] * world, errors(out)
    ranks = _results(out, world)
    reference = _reference_run(data, tmp_path / "reference", ranks, num_epochs, batch_size=8)
    pruned_somewhere = False
    for e in range(num_epochs):
        per_rank = [doc["epochs"][e] for doc in ranks]
        # One plan: same snapshot and keep set on every rank, equal to the single process's.
        assert {p["snapshot"] for p in per_rank} == {reference[e]}
        kept = per_rank[0]["kept"]
        assert all(p["kept"] == kept for p in per_rank)
        pruned_somewhere |= len(kept) < N
        # Same number of steps on every rank (DDP would hang otherwise), as planned.
        assert len({p["batches"] for p in per_rank}) == 1
        assert all(p["batches"] == p["planned_batches"] for p in per_rank)
        real = [i for p in per_rank for i, w in zip(p["ids"], p["weights"]) if w > 0]
        assert len(real) == len(set(real)), "a sample was visited by two ranks"
        pads = [i for p in per_rank for i, w in zip(p["ids"], p["weights"]) if w == 0]
        if drop_last:
            assert not pads
            assert set(real) <= set(kept)
            assert len(kept) - len(real) == sum(p["trimmed"] for p in per_rank)
        else:
            assert sorted(real) == sorted(kept)
            assert len(pads) == sum(p["padded"] for p in per_rank)
    assert pruned_somewhere, "InfoBatch never pruned: the test would not see a wrong plan"
    # After the last epoch: identical replicas, equal to the single process fed the same losses.
    assert {doc["final"] for doc in ranks} == {reference[-1]}
    # One writer: rank 0 commits (pins at every epoch start, a flush at close), replicas never write.
    assert ranks[0]["stats"]["writer"] == 1 and ranks[0]["stats"]["store_flushes"] >= num_epochs
    assert all(doc["stats"]["writer"] == 0 and doc["stats"]["store_flushes"] == 0 for doc in ranks[1:])
    syncs = ranks[0]["stats"]["syncs"]
    if sync_every is None:
        assert syncs == num_epochs + 1  # one exchange per snapshot (every epoch start and the end)
    else:
        assert syncs > num_epochs * 2
    visited = sum(len(doc["epochs"][e]["ids"]) for doc in ranks for e in range(num_epochs))
    assert sum(doc["stats"]["reports_synced"] for doc in ranks) == world * visited


def test_needs_process_group(tmp_path: Path) -> None:
    store = ScoreStore(tmp_path / "s", 10, "fp", flush_interval_s=None)
    try:
        with pytest.raises(DistributedError, match="init_process_group"):
            DistributedScores(store)
    finally:
        store.close()


def test_single_rank_group_matches_plain_store(tmp_path: Path) -> None:
    """World size 1 (a real gloo group): every method works and equals a plain ScoreStore."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        scores = DistributedScores.open(tmp_path / "a", 50, "fp", sync_every=7, flush_interval_s=None)
        plain = ScoreStore(tmp_path / "b", 50, "fp", flush_interval_s=None)
        rng = np.random.default_rng(0)
        for step in range(12):
            ids = torch.from_numpy(rng.integers(0, 50, 4))
            losses = torch.from_numpy(rng.random(4).astype(np.float32))
            scores.set_epoch(step // 4)
            plain.set_epoch(step // 4)
            scores.update(ids, losses)
            plain.update(ids, losses)
        scores.record_skipped(3, "mixed")
        with pytest.raises(Exception, match="integer"):
            scores.update(torch.tensor([1.0]), torch.tensor([0.5]))
        with pytest.raises(Exception, match="equal length"):
            scores.update(torch.tensor([1, 2]), torch.tensor([0.5]))
        snap = scores.snapshot()
        assert snap.fingerprint == plain.snapshot().fingerprint
        assert scores.store.stats["skipped_mixed"] == 3
        assert scores.stats["syncs"] >= 6  # 48 reports + 3 skipped at sync_every=7
        assert scores.pinned_snapshot(snap.fingerprint).fingerprint == snap.fingerprint
        plain.close()
        scores.close()
    finally:
        dist.destroy_process_group()


def test_policy_decides_from_synced_scores() -> None:
    """Guard for the test above: InfoBatch prunes the well-learned half of seen samples."""
    from shardprune.scores.snapshot import ScoreSnapshot, fresh_columns

    cols = fresh_columns(N)
    ids = np.arange(N)
    cols["loss"][:] = fake_losses(ids, 0)
    cols["visits"][:] = 1
    decision = make_policy("infobatch", prune_ratio=0.5).decide(ScoreSnapshot.from_columns(cols), 1, 0, 4)
    assert 0 < decision.num_kept < N
