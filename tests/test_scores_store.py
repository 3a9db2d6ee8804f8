"""ScoreStore: update rule, validation, threads, persistence, ownership, processes, resume, S3."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shardprune.errors import (
    CheckpointMismatchError,
    ConfigError,
    InvalidLossError,
    ScoreStoreError,
    ScoreStoreMismatchError,
    UnflushedScoresWarning,
)
from shardprune.policies import make_policy
from shardprune.scores import ScoreSnapshot, ScoreStore
from shardprune.scores.generations import MAX_LIVE_GENERATIONS, POINTER_NAME, read_commit
from shardprune.storage import Storage

FP = "dataset-fingerprint-1"


def open_store(path: Path | str, n: int = 1000, **kw: Any) -> ScoreStore:
    kw.setdefault("flush_interval_s", None)
    kw.setdefault("chunk_size", 100)
    return ScoreStore(path, n, FP, **kw)


def reference(reports: list[tuple[list[int], list[float], int]], n: int, beta: float) -> dict[str, np.ndarray]:
    """The update rule, one report at a time, in plain Python."""
    loss = [float("nan")] * n
    ema = [float("nan")] * n
    dema = [0.0] * n
    visits = [0] * n
    last = [-1] * n
    for ids, losses, epoch in reports:
        for i, x in zip(ids, losses):
            x = float(np.float32(x))
            if visits[i] == 0:
                ema[i], dema[i] = x, 0.0
            else:
                change = abs(x - loss[i])
                dema[i] = change if visits[i] == 1 else beta * dema[i] + (1 - beta) * change
                ema[i] = beta * ema[i] + (1 - beta) * x
            loss[i] = x
            visits[i] += 1
            last[i] = epoch
    return {"loss": np.array(loss), "loss_ema": np.array(ema), "delta_ema": np.array(dema),
            "visits": np.array(visits), "last_epoch": np.array(last)}


def test_update_rule_matches_reference_with_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reports = []
    for step in range(60):
        ids = rng.integers(0, 50, size=16).tolist()  # duplicates inside a batch and across batches
        reports.append((ids, rng.gamma(2.0, 1.0, size=16).tolist(), step // 20))
    with open_store(tmp_path / "s", n=50, chunk_size=7) as st:
        for ids, losses, epoch in reports:
            st.update(ids, losses, epoch=epoch)
        snap = st.snapshot()
    ref = reference(reports, 50, 0.9)
    np.testing.assert_array_equal(snap.visits, ref["visits"])
    np.testing.assert_array_equal(snap.last_epoch, ref["last_epoch"])
    np.testing.assert_allclose(snap.loss, ref["loss"], rtol=1e-6)
    np.testing.assert_allclose(snap.loss_ema, ref["loss_ema"], rtol=1e-5)
    np.testing.assert_allclose(snap.delta_ema, ref["delta_ema"], rtol=1e-5, atol=1e-6)
    assert np.isnan(snap.loss[snap.visits == 0]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_inputs_any_loss_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    with open_store(tmp_path / "s") as st:
        st.set_epoch(3)
        st.update(torch.tensor([5, 7], dtype=torch.int32), torch.tensor([1.5, 2.5], dtype=dtype))
        snap = st.snapshot()
    assert snap.loss[5] == 1.5 and snap.loss[7] == 2.5 and snap.last_epoch[5] == 3


def test_large_ids_never_pass_through_the_loss_dtype(tmp_path: Path) -> None:
    n = (1 << 24) + 8
    big = [(1 << 24) + 1, (1 << 24) + 7, 257, 2049]
    with ScoreStore(tmp_path / "s", n, FP, flush_interval_s=None, chunk_size=1 << 22) as st:
        st.update(torch.tensor(big, dtype=torch.int64), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16))
        st.wait()
        visits = st._columns["visits"]
        assert np.flatnonzero(visits).tolist() == sorted(big)
        assert st._columns["loss"][(1 << 24) + 7] == 2.0


def test_float_ids_are_refused(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as st:
        with pytest.raises(InvalidLossError, match="integer"):
            st.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
        with pytest.raises(InvalidLossError, match="integers"):
            st.update(np.array([1.0]), np.array([1.0]))


def test_invalid_reports_raise_and_never_poison(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as st:
        st.update([1, 2], [1.0, 1.0], epoch=0)
        with pytest.raises(InvalidLossError, match=r"not finite.*Nothing was applied"):
            st.update([1, 3], [2.0, float("nan")], epoch=0)
        with pytest.raises(InvalidLossError, match="not finite"):
            st.update(torch.tensor([1, 3]), torch.tensor([float("inf"), 1.0]), epoch=0)
        with pytest.raises(InvalidLossError, match=r"sample id 1000 .* outside 0\.\.999"):
            st.update([1, 1000], [2.0, 2.0], epoch=0)
        with pytest.raises(InvalidLossError, match=r"sample id -1"):
            st.apply(np.array([-1]), np.array([2.0], dtype=np.float32), 0)
        with pytest.raises(InvalidLossError, match="length mismatch: 2 ids but 3 losses"):
            st.update([1, 2], [1.0, 1.0, 1.0], epoch=0)
        with pytest.raises(InvalidLossError, match="1-D"):
            st.update([1, 2], torch.tensor(1.0), epoch=0)
        snap = st.snapshot()
    assert snap.visits[1] == 1 and snap.visits[3] == 0 and snap.loss[1] == 1.0
    assert np.isfinite(snap.loss[snap.seen]).all()


def test_skip_mode_counts_and_drops(tmp_path: Path) -> None:
    with open_store(tmp_path / "s", invalid="skip") as st:
        st.update([1, 2, 3, 5000], [1.0, float("nan"), float("inf"), 1.0], epoch=0)
        snap = st.snapshot()
        assert st.stats["skipped_nonfinite"] == 2 and st.stats["skipped_out_of_range"] == 1
        with pytest.raises(InvalidLossError, match="length mismatch"):
            st.update([1], [1.0, 2.0])
    assert snap.visits.sum() == 1 and snap.visits[1] == 1


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ema_beta=1\.0 must be a finite number in \[0\.0, 1\.0\)"):
        ScoreStore(tmp_path / "a", 10, FP, ema_beta=1.0)
    with pytest.raises(ConfigError, match="invalid='drop'"):
        ScoreStore(tmp_path / "a", 10, FP, invalid="drop")
    with pytest.raises(ConfigError, match="num_samples=0"):
        ScoreStore(tmp_path / "a", 0, FP)
    with pytest.raises(ConfigError, match="flush_interval_s=0"):
        ScoreStore(tmp_path / "a", 10, FP, flush_interval_s=0)


def test_concurrent_updates_from_threads_lose_nothing(tmp_path: Path) -> None:
    n, threads, steps, batch = 2000, 8, 150, 64
    plans = [np.random.default_rng(t).integers(0, n, size=(steps, batch)) for t in range(threads)]
    with open_store(tmp_path / "s", n=n, flush_interval_s=0.05) as st:
        def run(plan: np.ndarray) -> None:
            for row in plan:
                st.update(torch.from_numpy(row), torch.ones(batch), epoch=0)

        workers = [threading.Thread(target=run, args=(p,)) for p in plans]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        snap = st.snapshot()
        expected = np.bincount(np.concatenate([p.ravel() for p in plans]), minlength=n)
        np.testing.assert_array_equal(snap.visits, expected)
        assert st.stats["updates_applied"] == threads * steps * batch
    with open_store(tmp_path / "s", n=n, writer=False) as again:
        np.testing.assert_array_equal(again.snapshot().visits, expected)


def test_update_returns_without_applying(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as st:
        gate = threading.Event()
        original = st._columns.fold

        def slow(clean: Any) -> None:
            gate.wait(5)
            original(clean)

        st._columns.fold = slow  # type: ignore[method-assign]
        t0 = time.perf_counter()
        st.update([1], [1.0], epoch=0)
        assert time.perf_counter() - t0 < 0.5
        assert st._columns["visits"][1] == 0
        gate.set()
        st.wait()
        assert st._columns["visits"][1] == 1


def test_persist_reopen_and_mismatch(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as st:
        st.update(np.arange(0, 1000, 3), np.full(334, 2.5), epoch=1)
        before = st.snapshot(pin=False)
    with open_store(tmp_path / "s", chunk_size=999) as st:
        assert st.chunk_size == 100
        assert st.snapshot(pin=False).fingerprint == before.fingerprint
    with pytest.raises(ScoreStoreMismatchError, match=r"num_samples=1000.*num_samples=1001.*new store URL"):
        ScoreStore(tmp_path / "s", 1001, FP)
    with pytest.raises(ScoreStoreMismatchError, match="other-dataset"):
        ScoreStore(tmp_path / "s", 1000, "other-dataset")


def test_flush_timer_and_generation_gc(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_store(root, flush_interval_s=0.05) as st:
        for step in range(30):
            st.update([step * 30 % 1000], [1.0], epoch=0)
            time.sleep(0.01)
        deadline = time.time() + 5
        while st.stats["flushes"] < 3 and time.time() < deadline:
            time.sleep(0.02)
        assert st.stats["flushes"] >= 3
        (root / "gen-99999999-deadbeef").mkdir()  # what a writer killed mid-flush leaves behind
        st.update([0], [2.0], epoch=0)
        st.flush()
        commit = read_commit(Storage(root))
        assert commit is not None
        gens = sorted(p.name for p in root.iterdir() if p.name.startswith("gen-"))
        assert "gen-99999999-deadbeef" not in gens
        assert set(gens) == commit.live_dirs()


def test_two_writers_cannot_both_commit(tmp_path: Path) -> None:
    first = open_store(tmp_path / "s")
    first.update([1], [1.0], epoch=0)
    first.flush()
    second = open_store(tmp_path / "s")  # claims ownership
    second.update([2], [5.0], epoch=0)
    first.update([2], [9.0], epoch=0)
    with pytest.raises(ScoreStoreError, match="now owned by writer .* open the other processes with writer=False"):
        first.flush()
    second.close()
    first.close()  # does not flush after losing ownership
    with open_store(tmp_path / "s", writer=False) as reader:
        snap = reader.snapshot()
    assert snap.loss[1] == 1.0 and snap.loss[2] == 5.0


def test_replica_never_writes(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_store(root) as st:
        st.update([1], [1.0], epoch=0)
    listing = sorted(os.listdir(root))
    pointer = (root / POINTER_NAME).read_bytes()
    timers = sum(t.name == "shardprune-flush" for t in threading.enumerate())
    with open_store(root, writer=False, flush_interval_s=0.01) as replica:
        # A replica starts no flush timer, whatever its interval.
        assert sum(t.name == "shardprune-flush" for t in threading.enumerate()) == timers
        replica.apply(np.array([3, 4]), np.array([1.0, 2.0], dtype=np.float32), 0)
        replica.update([5], [1.0], epoch=0)
        replica.flush()
        with pytest.raises(ConfigError, match="replicas never write"):
            replica.snapshot(pin=True)
        assert replica.snapshot().visits[[1, 3, 4, 5]].tolist() == [1, 1, 1, 1]
        assert replica.stats["flushes"] == 0 and replica.stats["chunks_written"] == 0
    # close() ran its final flush: still nothing written.
    assert sorted(os.listdir(root)) == listing and (root / POINTER_NAME).read_bytes() == pointer


def test_a_dropped_writer_warns_about_unflushed_reports(tmp_path: Path) -> None:
    root = tmp_path / "s"
    st = open_store(root, flush_interval_s=30.0)
    st.update([1, 150], [1.0, 2.0], epoch=0)
    st.wait()
    with pytest.warns(UnflushedScoresWarning, match=r"reports in 2 chunk\(s\) .* lost.*store.close\(\)"):
        del st
        gc.collect()
    with open_store(root, writer=False) as reader:
        assert reader.snapshot().visits.sum() == 0  # the finalizer warns; it never writes
    # Closed, flushed or replica stores are dropped silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_store(root) as closed:
            closed.update([1], [1.0], epoch=0)
        flushed = open_store(root)
        flushed.update([2], [1.0], epoch=0)
        flushed.flush()
        replica = open_store(root, writer=False)
        replica.update([3], [1.0], epoch=0)
        replica.wait()
        del closed, flushed, replica
        gc.collect()


def test_pickling_is_refused(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as st:
        with pytest.raises(ScoreStoreError, match=r"cannot be pickled.*snapshot\(\)"):
            pickle.dumps(st)
        snap = st.snapshot()
        assert pickle.loads(pickle.dumps(snap)).fingerprint == snap.fingerprint


def _use_in_child(store: ScoreStore, out: Any) -> None:
    try:
        store.update([1], [1.0], epoch=0)
        out.put("no error")
    except ScoreStoreError as exc:
        out.put(str(exc))


def test_forked_child_cannot_use_the_parent_store(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    with open_store(tmp_path / "s") as st:
        q = ctx.Queue()
        child = ctx.Process(target=_use_in_child, args=(st, q))
        child.start()
        message = q.get(timeout=30)
        child.join(30)
        assert "cannot cross fork" in message
        st.update([1], [1.0], epoch=0)  # the parent's store still works
        assert st.snapshot().visits[1] == 1


def _visits_in_child(snap: ScoreSnapshot, out: Any) -> None:
    out.put(int(snap.visits.sum()))


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawned_workers_never_get_the_live_store(tmp_path: Path, method: str) -> None:
    """Starting a spawn/forkserver process with the store fails in the parent; a snapshot travels."""
    ctx = mp.get_context(method)
    with open_store(tmp_path / "s") as st:
        st.update([1, 2, 3], [1.0, 2.0, 3.0], epoch=0)
        q = ctx.Queue()
        child = ctx.Process(target=_use_in_child, args=(st, q))
        with pytest.raises(ScoreStoreError, match=r"cannot be pickled.*snapshot\(\)"):
            child.start()
        snap = st.snapshot()
        child = ctx.Process(target=_visits_in_child, args=(snap, q))
        child.start()
        assert q.get(timeout=60) == 3
        child.join(30)
        assert child.exitcode == 0
        st.update([4], [1.0], epoch=0)  # the parent's store still works
        assert st.snapshot().visits[4] == 1


def _train_steps(st: ScoreStore, epoch: int, ids: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for chunk in np.array_split(ids, max(1, len(ids) // 64)):
        st.update(torch.from_numpy(chunk), torch.from_numpy(rng.gamma(2.0, 1.0, len(chunk)).astype(np.float32)), epoch=epoch)


def _resume_roundtrip(url: str, **opts: Any) -> None:
    n, seed = 3000, 11
    policy = make_policy("infobatch", prune_ratio=0.5)
    with ScoreStore(url, n, FP, flush_interval_s=None, chunk_size=256, **opts) as st:
        _train_steps(st, 0, np.arange(n), 1)
        st.set_epoch(1)
        planned = st.snapshot()
        plan = policy.decide(planned, 1, seed, 10)
        _train_steps(st, 1, np.flatnonzero(plan.keep)[:1000], 2)
        state = {"scores": st.state_dict(), "policy": policy.state_dict()}
        at_checkpoint = state["scores"]["scores_fingerprint"]
        _train_steps(st, 1, np.flatnonzero(plan.keep)[1000:1500], 3)  # after the checkpoint, then a crash
        st.flush()
    with ScoreStore(url, n, FP, flush_interval_s=None, **opts) as st:
        assert st.snapshot(pin=False).fingerprint != at_checkpoint
        st.load_state_dict(state["scores"])
        assert st.epoch == 1
        assert st.snapshot(pin=False).fingerprint == at_checkpoint
        policy2 = make_policy("infobatch", prune_ratio=0.5)
        policy2.load_state_dict(state["policy"])
        again = st.pinned_snapshot(state["scores"]["snapshot_fingerprint"])
        assert again.fingerprint == planned.fingerprint
        plan2 = policy2.decide(again, 1, seed, 10)
        np.testing.assert_array_equal(plan2.keep, plan.keep)
        np.testing.assert_array_equal(plan2.weights, plan.weights)
        with pytest.raises(CheckpointMismatchError, match="in checkpoint"):
            make_policy("infobatch", prune_ratio=0.4).load_state_dict(state["policy"])
        with pytest.raises(CheckpointMismatchError, match="not pinned"):
            st.pinned_snapshot("0" * 32)
    with ScoreStore(url, n, FP, flush_interval_s=None, **opts) as st:
        assert st.snapshot(pin=False).fingerprint == at_checkpoint  # the rollback was committed


def test_resume_reproduces_the_epoch_plan(tmp_path: Path) -> None:
    _resume_roundtrip(str(tmp_path / "s"))


def test_s3_store_roundtrip_and_resume(s3_server: Any) -> None:
    url = s3_server.url()
    opts = {"storage_options": s3_server.storage_options}
    with ScoreStore(url, 500, FP, flush_interval_s=None, chunk_size=64, **opts) as st:
        st.update(np.arange(0, 500, 2), np.full(250, 1.25), epoch=0)
        st.flush()
        st.update(np.arange(1, 500, 2), np.full(250, 0.5), epoch=0)
        expected = st.snapshot(pin=False)
    with ScoreStore(url, 500, FP, flush_interval_s=None, writer=False, **opts) as replica:
        assert replica.snapshot().fingerprint == expected.fingerprint
    with pytest.raises(ScoreStoreMismatchError):
        ScoreStore(url, 501, FP, **opts)
    _resume_roundtrip(s3_server.url(), **opts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reports_are_copied_off_the_training_thread(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as st:
        ids = torch.arange(10, device="cuda")
        st.update(ids, torch.full((10,), 2.0, device="cuda", dtype=torch.bfloat16), epoch=0)
        st.update(ids, torch.tensor([float("nan")] * 10, device="cuda"), epoch=0)
        with pytest.raises(InvalidLossError, match="not finite"):
            st.wait()
        snap = st.snapshot()
    assert snap.visits[:10].tolist() == [1] * 10 and (snap.loss[:10] == 2.0).all()


def test_snapshot_is_frozen(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as st:
        st.update([1], [1.0], epoch=0)
        snap = st.snapshot()
        st.update([1], [3.0], epoch=0)
        st.wait()
        assert snap.loss[1] == 1.0
        with pytest.raises(ValueError):
            snap.loss[1] = 5.0
    assert ScoreSnapshot.fresh(4).fingerprint == ScoreSnapshot.fresh(4).fingerprint
    assert ScoreSnapshot.fresh(4).fingerprint != ScoreSnapshot.fresh(5).fingerprint


def test_too_many_live_generations_rewrite_every_chunk(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with open_store(root, n=2000, chunk_size=100) as st:  # 20 chunks
        for chunk in range(MAX_LIVE_GENERATIONS):  # one chunk per flush: one generation each
            st.update([chunk * 100], [float(chunk)], epoch=0)
            st.flush()
        head = read_commit(Storage(root))
        assert head is not None and len({head.chunks[c] for c in range(MAX_LIVE_GENERATIONS)}) == MAX_LIVE_GENERATIONS
        written = st.stats["chunks_written"]
        st.update([1999], [7.0], epoch=0)
        st.flush()  # the 17th generation: every chunk is rewritten into it
        assert st.stats["chunks_written"] - written == 20
        head = read_commit(Storage(root))
        assert head is not None and len(set(head.chunks)) == 1
        expected = st.snapshot(pin=False)
    with open_store(root, n=2000, writer=False) as reader:
        snap = reader.snapshot()
    assert snap.fingerprint == expected.fingerprint
    assert snap.loss[[0, 1500, 1999]].tolist() == [0.0, 15.0, 7.0] and int(snap.visits.sum()) == 17
