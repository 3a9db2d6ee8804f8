"""Whole-job checkpoints: SIGKILL one rank mid-epoch, tear down, resume every rank exactly.

The reference run goes to the end without a fault. The faulty run has rank 1 kill
itself with a real SIGKILL in the middle of epoch 1; rank 0 must then fail at its next
collective (not hang). A new job of the same size resumes from the last checkpoint and
must hand every rank the same remaining batches (ids, in order) as the reference, and
end with the same scores. A job of another size is refused with both sizes named.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from dist_workers import PG_TIMEOUT_S, errors, launch
from loader_data import write_dataset

from shardprune.dist import read_checkpoint
from shardprune.errors import CheckpointMismatchError
from shardprune.scores import ScoreStore
from shardprune.scores.generations import MAX_PINS

WORLD = 2


def _log(out: Path, mode: str, rank: int) -> list[dict[str, Any]]:
    path = out / f"{mode}-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_sigkill_one_rank_then_resume_all_ranks(tmp_path: Path) -> None:
    data = str(tmp_path / "ds")
    write_dataset(data, n=300, per_shard=25)
    out = tmp_path / f"out-resumable-{WORLD}"

    ref_files: dict[str, Any] = {"store": str(tmp_path / "ref"), "ckpt": str(tmp_path / "ref.json")}
    codes = launch("resumable", WORLD, tmp_path, data=data, mode="reference", **ref_files)
    assert codes == [0] * WORLD, errors(out)

    ckpt = tmp_path / "job.json"
    kill_at = (1, 5)
    job_files: dict[str, Any] = {"store": str(tmp_path / "job"), "ckpt": str(ckpt)}
    wait = PG_TIMEOUT_S + 120
    codes = launch("resumable", WORLD, tmp_path, join_s=wait, data=data, mode="kill", kill_at=kill_at, **job_files)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] is not None, "rank 0 hung after its peer died (it was killed by the test)"
    assert codes[0] != 0, "rank 0 finished although its peer was killed"
    assert not (out / "kill-final0.json").exists()

    doc = read_checkpoint(ckpt)
    assert doc["world_size"] == WORLD
    assert (doc["epoch"], doc["batches_yielded"]) == (1, 4)  # the last checkpoint before the kill
    # Enough checkpoints were pinned to push out old pins; the epoch's plan pin survived.
    assert len(_log(out, "kill", 0)) > MAX_PINS * 2

    # The mid-epoch checkpoint under 4 ranks: refused on every rank, naming both sizes.
    codes = launch("wrong_world", 4, tmp_path, data=data, **job_files)
    wrong = tmp_path / "out-wrong_world-4"
    assert codes == [0] * 4, errors(wrong)
    for r in range(4):
        message = json.loads((wrong / f"rank{r}.json").read_text())["message"]
        assert "world_size=2" in message and "world_size=4" in message and "relaunch with 2 ranks" in message

    codes = launch("resumable", WORLD, tmp_path, data=data, mode="resume", **job_files)
    assert codes == [0] * WORLD, errors(out)
    for rank in range(WORLD):
        ref = _log(out, "reference", rank)
        resumed = _log(out, "resume", rank)
        start = next(i for i, r in enumerate(ref) if (r["epoch"], r["batch"]) == (1, 4))
        assert resumed == ref[start:], f"rank {rank} resumed with other batches"
        assert resumed and resumed[0]["epoch"] == 1
    runs = [(m, r) for m in ("reference", "resume") for r in range(WORLD)]
    finals = {json.loads((out / f"{m}-final{r}.json").read_text())["final"] for m, r in runs}
    assert len(finals) == 1, "the resumed job ended with other scores than the uninterrupted one"


def test_checkpoint_refuses_ranks_at_different_positions(tmp_path: Path) -> None:
    data = str(tmp_path / "ds")
    write_dataset(data, n=100, per_shard=25)
    ckpt = tmp_path / "ckpt.json"
    codes = launch("uneven", WORLD, tmp_path, data=data, store=str(tmp_path / "scores"), ckpt=str(ckpt))
    out = tmp_path / f"out-uneven-{WORLD}"
    assert codes == [0] * WORLD, errors(out)
    for r in range(WORLD):
        doc = json.loads((out / f"rank{r}.json").read_text())
        assert "rank 0: epoch 0 batch 1, rank 1: epoch 0 batch 0" in doc["message"]
    assert not ckpt.exists()


def test_read_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{\"version\": 1}")
    with pytest.raises(CheckpointMismatchError, match="keys"):
        read_checkpoint(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(CheckpointMismatchError, match="not JSON"):
        read_checkpoint(tmp_path / "junk.json")


def test_frequent_checkpoints_keep_the_epoch_plan_pin(tmp_path: Path) -> None:
    """More than MAX_PINS checkpoints in one epoch must not evict the snapshot it was planned from."""
    import numpy as np

    with ScoreStore(tmp_path / "s", 40, "fp", flush_interval_s=None) as store:
        store.apply(np.arange(10), np.ones(10, dtype=np.float32), 0)
        plan = store.snapshot()  # pinned: the epoch is planned from it
        states = []
        for k in range(MAX_PINS + 3):
            store.apply(np.array([10 + k]), np.array([0.5], dtype=np.float32), 0)
            states.append(store.state_dict())
        assert store.pinned_snapshot(plan.fingerprint).fingerprint == plan.fingerprint
        assert store.pinned_snapshot(states[-1]["scores_fingerprint"]).fingerprint == states[-1]["scores_fingerprint"]
        with pytest.raises(CheckpointMismatchError, match="not pinned"):
            store.pinned_snapshot(states[0]["scores_fingerprint"])


def test_single_process_checkpoint_needs_no_process_group(tmp_path: Path) -> None:
    """save_checkpoint / load_checkpoint with a plain ScoreStore: exact resume mid-epoch, then the next epoch."""
    import torch.distributed as dist

    from shardprune import StreamingLoader, open_dataset, weighted_loss
    from shardprune.dist import load_checkpoint, save_checkpoint

    data = tmp_path / "ds"
    write_dataset(data, n=120, per_shard=20)
    fp = open_dataset(data).fingerprint
    ckpt = tmp_path / "ckpt.json"
    assert not (dist.is_available() and dist.is_initialized())

    def job() -> tuple[StreamingLoader, ScoreStore]:
        store = ScoreStore(tmp_path / "scores", 120, fp, flush_interval_s=None)
        loader = StreamingLoader(data, batch_size=8, policy="infobatch", store=store, num_epochs=3, seed=1)
        return loader, store

    after: list[list[int]] = []
    loader, store = job()
    saved = False
    for epoch in range(3):
        for b, batch in enumerate(loader):
            if saved:
                after.append(batch["ids"].tolist())
            weighted_loss(batch, batch["npy"][:, 1].abs().float(), store)
            if epoch == 1 and b == 2:
                doc = save_checkpoint(ckpt, loader, store, extra={"step": 99})
                saved = True
    loader.close()
    store.close()
    assert doc["world_size"] == 1 and doc["epoch"] == 1 and doc["batches_yielded"] == 3
    assert read_checkpoint(ckpt) == json.loads(json.dumps(doc))

    loader, store = job()
    assert load_checkpoint(ckpt, loader, store) == {"step": 99}
    got: list[list[int]] = []
    for _ in range(2):  # the rest of epoch 1, then epoch 2, without set_epoch
        for batch in loader:
            got.append(batch["ids"].tolist())
            weighted_loss(batch, batch["npy"][:, 1].abs().float(), store)
    loader.close()
    store.close()
    assert got == after and len(got) > 5
