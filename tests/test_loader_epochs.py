"""The loader drives its own epochs: auto epochs, epochs past num_epochs, step mode, side-effect-free state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loader_data import SeenStore, write_dataset
from shardprune import ScoreStore, weighted_loss
from shardprune.loader import StreamingLoader
from shardprune.loader.epochs import full_batches
from shardprune.policies import make_policy
from shardprune.scores.snapshot import ScoreSnapshot

N = 160


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("epochs") / "ds"
    write_dataset(root, n=N, per_shard=20)
    return root


class CountingStore(SeenStore):
    """SeenStore that counts snapshot() calls (a collective on a distributed store)."""

    def __init__(self) -> None:
        super().__init__(n=N)
        self.calls = 0

    def snapshot(self) -> ScoreSnapshot:
        self.calls += 1
        return super().snapshot()


def _make(ds: Path, **kw: Any) -> StreamingLoader:
    args: dict[str, Any] = dict(
        batch_size=8, num_epochs=4, seed=3, policy=make_policy("random", prune_ratio=0.4), store=SeenStore(n=N),
        shuffle_buffer=16, prefetch_batches=0,
    )
    args.update(kw)
    return StreamingLoader(ds, **args)


def _pass(loader: StreamingLoader) -> tuple[list[int], set[int]]:
    ids: list[int] = []
    epochs: set[int] = set()
    for batch in loader:
        ids.extend(batch["ids"].tolist())
        epochs.add(batch["epoch"])
    return ids, epochs


def test_iter_without_set_epoch_serves_the_next_epoch_each_time(ds: Path) -> None:
    with _make(ds) as explicit:
        want = []
        for e in range(3):
            explicit.set_epoch(e)
            want.append(_pass(explicit)[0])
    with _make(ds) as auto:
        assert auto.epoch == 0
        for e in range(3):
            ids, epochs = _pass(auto)
            assert ids == want[e] and epochs == {e}  # each batch carries its epoch as an int
            assert auto.epoch == e + 1  # what the next iter() serves
        # A pass abandoned halfway is not replayed: the next iter() is the next epoch.
        it = iter(auto)
        first = next(it)
        assert first["epoch"] == 3
        del it
        assert next(iter(auto))["epoch"] == 4
    assert len({tuple(x) for x in want}) == 3


def test_epochs_past_num_epochs_read_everything_instead_of_crashing(ds: Path) -> None:
    with _make(ds, num_epochs=2) as loader:
        skipped = []
        for _ in range(4):
            _pass(loader)
            skipped.append(loader.epoch_stats.samples_skipped)
        assert skipped[0] > 0 and skipped[2:] == [0, 0]
        assert loader.plan is not None and loader.plan.epoch == 3
        loader.set_epoch(7)  # explicit epochs past the schedule are valid too
        assert loader.epoch_stats.samples_skipped == 0


def test_a_loop_that_never_calls_set_epoch_prunes_and_reports_each_epoch(ds: Path, tmp_path: Path) -> None:
    """The README loop without set_epoch: InfoBatch prunes after epoch 0, reports carry their epoch."""
    with ScoreStore(tmp_path / "scores", N, "fp", flush_interval_s=None) as store:
        with StreamingLoader(ds, batch_size=16, policy=make_policy("infobatch", delta=0.75), store=store,
                             num_epochs=4, seed=0) as loader:
            skipped, last_epochs = [], []
            for _ in range(4):
                for batch in loader:
                    losses = batch["npy"][:, 1].abs().float()  # a fixed per-sample "loss"
                    weighted_loss(batch, losses, store)
                skipped.append(loader.epoch_stats.samples_skipped)
                store.wait()
                last_epochs.append(int(store.snapshot(pin=False).columns()["last_epoch"].max()))
    assert skipped[0] == 0 and skipped[1] > 0 and skipped[2] > 0, skipped
    assert skipped[3] == 0  # 3 >= 0.75 * 4: annealing keeps everything
    assert last_epochs == [0, 1, 2, 3]  # the store took each report's epoch from its batch


def test_len_and_state_dict_plan_nothing_and_call_no_collective(ds: Path) -> None:
    store = CountingStore()
    with _make(ds, store=store, batch_size=7, drop_last=False) as loader:
        assert len(loader) == full_batches(N, loader.cfg) == -(-N // 7)  # 23, an upper bound
        state = json.loads(json.dumps(loader.state_dict()))
        assert store.calls == 0 and loader.plan is None
        assert state["epoch"] == 0 and state["plan_fingerprint"] is None and state["step"] is None
        first = _pass(loader)[0]
        assert store.calls == 2  # epoch 0 at its start; epoch 1 when epoch 0's last batch was requested
        assert loader.plan is not None and len(loader) == loader.plan.num_batches < 23
        loader.state_dict()
        len(loader)
        assert store.calls == 2
    with _make(ds, store=CountingStore(), batch_size=7, drop_last=False) as resumed:
        resumed.load_state_dict(state)
        assert _pass(resumed)[0] == first


def test_state_at_an_epoch_end_resumes_with_the_next_epoch(ds: Path) -> None:
    with _make(ds) as ref:
        _pass(ref)
        state = ref.state_dict()
        want = _pass(ref)
    assert state["batches_yielded"] > 0
    with _make(ds) as resumed:
        resumed.load_state_dict(state)
        assert _pass(resumed) == want


def _stream(loader: StreamingLoader) -> list[tuple[int, list[int], list[float]]]:
    return [(b["epoch"], b["ids"].tolist(), b["weights"].tolist()) for b in loader]


STEP_KW: dict[str, Any] = dict(num_epochs=None, num_steps=30, policy=make_policy("infobatch", prune_ratio=0.5, delta=0.5))


def test_step_mode_is_one_stream_across_epochs_annealing_by_steps(ds: Path) -> None:
    with _make(ds, **STEP_KW) as loader:
        assert len(loader) == 30
        got = _stream(loader)
        assert len(got) == 30 and _stream(loader) == []  # the stream is spent
        state = loader.state_dict()
    assert state["step"] == 30
    epochs = [e for e, _, _ in got]
    assert epochs == sorted(epochs) and epochs[0] == 0 and epochs[-1] >= 2
    # Each epoch was decided at the step it started from, with num_steps as the horizon.
    policy = make_policy("infobatch", prune_ratio=0.5, delta=0.5)
    start = 0
    for e in sorted(set(epochs)):
        n_batches = epochs.count(e)
        keep = policy.decide(SeenStore(n=N).snapshot(), start, 3, 30).keep
        ids = [i for ep, b, _ in got if ep == e for i in b]
        assert set(ids) <= set(np.flatnonzero(keep).tolist())
        annealing = start >= 15
        assert bool(keep.all()) == annealing, (e, start)
        start += n_batches


def test_step_mode_resumes_at_every_step_and_continues_after_a_break(ds: Path) -> None:
    with _make(ds, **STEP_KW) as ref:
        full = _stream(ref)
    for k in range(0, 31, 3):
        with _make(ds, **STEP_KW) as first:
            it = iter(first)
            head = [next(it) for _ in range(k)]
            state = json.loads(json.dumps(first.state_dict()))
            del it
            assert [(b["epoch"], b["ids"].tolist(), b["weights"].tolist()) for b in head] == full[:k]
            assert _stream(first) == full[k:]  # a new iter() continues the stream
        with _make(ds, **STEP_KW) as second:
            second.load_state_dict(state)
            assert _stream(second) == full[k:], f"resume at step {k}"


def test_weighted_loss_passes_the_batch_epoch_to_the_store() -> None:
    calls: list[tuple[list[int], int | None]] = []

    class Sink:
        def update(self, ids: Any, losses: Any, *, epoch: int | None = None) -> None:
            calls.append((torch.as_tensor(ids).tolist(), epoch))

        def record_skipped(self, count: int, reason: str) -> None:
            pass

    batch = {"ids": torch.tensor([4, 5, 6]), "weights": torch.ones(3), "epoch": 7,
             "mixed": torch.tensor([False, True, False])}
    weighted_loss(batch, torch.ones(3), Sink())
    weighted_loss({"ids": torch.tensor([1])}, torch.ones(1), Sink())
    assert calls == [([4, 6], 7), ([1], None)]


def test_next_epoch_is_planned_from_the_reports_made_before_the_last_batch_was_requested(
    ds: Path, tmp_path: Path
) -> None:
    from shardprune.dist import load_checkpoint, save_checkpoint

    def job(name: str) -> tuple[StreamingLoader, ScoreStore]:
        store = ScoreStore(tmp_path / name, N, "fp", flush_interval_s=None)
        return StreamingLoader(ds, batch_size=16, policy="infobatch", store=store, num_epochs=3, seed=0), store

    def train(loader: StreamingLoader, store: ScoreStore) -> list[list[int]]:
        out = []
        for batch in loader:
            out.append(batch["ids"].tolist())
            weighted_loss(batch, batch["npy"][:, 1].abs().float(), store)
        return out

    loader, store = job("a")
    epoch0 = train(loader, store)
    save_checkpoint(tmp_path / "end0.json", loader, store)  # at the end of epoch 0, every report made
    epoch1 = train(loader, store)
    assert loader.snapshot is not None
    # Epoch 1 was decided from every report of epoch 0 except its last batch's.
    assert int(loader.snapshot.columns()["visits"].sum()) == 16 * (len(epoch0) - 1) == 144
    loader.close()
    store.close()
    # A resume from the end of epoch 0 plans epoch 1 from that same snapshot, not the later scores.
    loader, store = job("a")
    load_checkpoint(tmp_path / "end0.json", loader, store)
    assert train(loader, store) == epoch1
    loader.close()
    store.close()


def test_checkpoints_in_the_tail_of_an_epoch_resume_both_epochs_exactly(ds: Path, tmp_path: Path) -> None:
    """More checkpoints than the store keeps pins, after the next epoch was frozen: both plans still resume."""
    from shardprune.dist import load_checkpoint, save_checkpoint
    from shardprune.scores.generations import MAX_PINS

    def job() -> tuple[StreamingLoader, ScoreStore]:
        store = ScoreStore(tmp_path / "scores", N, "fp", flush_interval_s=None)
        loader = StreamingLoader(ds, batch_size=1, policy="infobatch", store=store, num_epochs=2, seed=0,
                                 prefetch_batches=0)
        return loader, store

    loader, store = job()
    seen: list[int] = []
    for epoch in range(2):
        for b, batch in enumerate(loader):
            seen.extend(batch["ids"].tolist())
            weighted_loss(batch, batch["npy"][:, 1].abs().float(), store)
            if epoch == 0 and b >= 150 - MAX_PINS:  # the next epoch is frozen at batch 150 (160 - 160 // 16)
                save_checkpoint(tmp_path / f"ckpt-{b}.json", loader, store)
    loader.close()
    store.close()
    loader, store = job()
    load_checkpoint(tmp_path / "ckpt-157.json", loader, store)  # 158 batches served, 2 left
    rest = [i for _ in range(2) for batch in loader for i in batch["ids"].tolist()
            if weighted_loss(batch, batch["npy"][:, 1].abs().float(), store) is not None]
    loader.close()
    store.close()
    assert rest == seen[158:] and len(rest) > 100
