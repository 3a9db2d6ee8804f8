"""A real ``lightning.Trainer.fit`` over the loader prunes after epoch 0, anneals, and resumes exactly.

Lightning only calls ``dataloader.sampler.set_epoch``; before the adapters every epoch
replayed epoch 0, unpruned. ``as_lightning(loader)`` takes that call and has no fixed
length (so pruned and annealing epochs are trained whole); ``PruningCheckpoint`` saves the
loader's position and the score store in Lightning's checkpoints and restores them before
the first batch of a resumed ``fit`` is fetched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loader_data import N, write_dataset
from shardprune import ScoreStore, StreamingLoader, make_policy, open_dataset, weighted_loss
from shardprune.errors import ConfigError
from shardprune.loader.adapters import as_lightning

L = pytest.importorskip("lightning")

from shardprune.loader.lightning_callback import PruningCheckpoint  # noqa: E402

EPOCHS = 5
BATCH = 32
#: InfoBatch anneals from epoch ceil(0.6 * 5) = 3: epochs 1-2 prune, 3-4 keep everything.
DELTA = 0.6
#: The checkpoint is taken after this many batches of this epoch (a pruned one).
SAVE_EPOCH, SAVE_AFTER = 2, 2


class Net(L.LightningModule):  # type: ignore[misc,name-defined]
    """A linear classifier on the feature rows that records every step it trains on."""

    def __init__(self, loader: StreamingLoader, store: ScoreStore) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(5, 5)
        self.loader = loader
        self.store = store
        self.steps: list[tuple[int, list[int], list[float], float]] = []
        self.stats: dict[int, Any] = {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = F.cross_entropy(self.fc(batch["npy"][:, 1:]), batch["label"], reduction="none")
        loss = weighted_loss(batch, losses, self.store)
        self.steps.append((self.current_epoch, batch["ids"].tolist(), batch["weights"].tolist(), float(loss.detach())))
        return loss

    def on_train_epoch_end(self) -> None:
        self.stats[self.current_epoch] = self.loader.epoch_stats

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)



class SaveMidEpoch(L.Callback):  # type: ignore[misc,name-defined]
    """Save a checkpoint after batch ``SAVE_AFTER`` of epoch ``SAVE_EPOCH`` and one at the end of epoch 1."""

    def __init__(self, path: Path, end_path: Path) -> None:
        self.path = path
        self.end_path = end_path
        self.global_step = -1
        self.end_step = -1

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == SAVE_EPOCH and batch_idx == SAVE_AFTER - 1:
            trainer.save_checkpoint(self.path)
            self.global_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if trainer.current_epoch == 1:
            trainer.save_checkpoint(self.end_path)
            self.end_step = trainer.global_step


def _trainer(root: Path, callbacks: list[Any]) -> Any:
    return L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
    )


def _run(
    data: Path, scores: Path, root: Path, callbacks: list[Any], ckpt: Path | None = None, restore: bool = True
) -> tuple[Net, dict[str, np.ndarray]]:
    ds = open_dataset(data)
    store = ScoreStore(scores, len(ds), ds.fingerprint, flush_interval_s=None)
    policy = make_policy("infobatch", delta=DELTA)
    loader = StreamingLoader(ds, batch_size=BATCH, policy=policy, store=store, num_epochs=EPOCHS, seed=7)
    net = Net(loader, store)
    data_ = as_lightning(loader)
    try:
        _trainer(root, [PruningCheckpoint(data_, store)] * restore + callbacks).fit(
            net, train_dataloaders=data_, ckpt_path=None if ckpt is None else str(ckpt)
        )
        columns = store.snapshot(pin=False).columns()
    finally:
        store.close()
        loader.close()
    return net, {k: np.array(v) for k, v in columns.items()}


@pytest.mark.slow
def test_lightning_fit_prunes_anneals_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data)
    ckpt = tmp_path / "mid.ckpt"
    saver = SaveMidEpoch(ckpt, tmp_path / "end.ckpt")
    net, final = _run(data, tmp_path / "scores", tmp_path / "a", [saver])

    # Pruning reached the loader: epoch 0 has no scores, 1-2 prune, 3-4 anneal.
    skipped = [net.stats[e].samples_skipped for e in range(EPOCHS)]
    assert [s.epoch for s in net.stats.values()] == list(range(EPOCHS)), "every epoch must plan its own epoch"
    assert skipped[0] == 0 and skipped[3] == 0 and skipped[4] == 0, skipped
    assert skipped[1] > 0 and skipped[2] > 0, f"InfoBatch pruned nothing after epoch 0 under Lightning: {skipped}"
    trained = {e: [i for ep, ids, _, _ in net.steps if ep == e for i in ids] for e in range(EPOCHS)}
    full = N // BATCH * BATCH
    assert [len(trained[e]) for e in (0, 3, 4)] == [full] * 3
    for e in (1, 2):
        assert len(trained[e]) == net.stats[e].samples_planned < full
        assert len(set(trained[e])) == len(trained[e])
    assert trained[3] != trained[0], "an annealing epoch replayed epoch 0's order"
    # Every report reached the store: one visit per trained sample.
    assert int(final["visits"].sum()) == sum(len(t) for t in trained.values())

    # Resume from the mid-epoch checkpoint with fresh objects: the same remaining steps, same scores.
    assert ckpt.exists() and saver.global_step > 0
    resumed, final_b = _run(data, tmp_path / "scores", tmp_path / "b", [], ckpt=ckpt)
    rest = net.steps[saver.global_step :]
    assert resumed.steps[0][0] == SAVE_EPOCH
    assert [(e, ids, w) for e, ids, w, _ in resumed.steps] == [(e, ids, w) for e, ids, w, _ in rest]
    np.testing.assert_allclose([s[3] for s in resumed.steps], [s[3] for s in rest], rtol=1e-6)
    for name in ("visits", "loss"):
        np.testing.assert_allclose(final_b[name], final[name], rtol=1e-6, err_msg=name)

    # Resume from the end of epoch 1 (where ModelCheckpoint usually saves): epochs 2-4 as before.
    from_end, final_c = _run(data, tmp_path / "scores", tmp_path / "c", [], ckpt=tmp_path / "end.ckpt")
    rest = net.steps[saver.end_step :]
    assert rest[0][0] == 2 and net.steps[saver.end_step - 1][0] == 1
    assert [(e, ids, w) for e, ids, w, _ in from_end.steps] == [(e, ids, w) for e, ids, w, _ in rest]
    np.testing.assert_allclose(final_c["loss"], final["loss"], rtol=1e-6)

    # Without the callback the resumed fit cannot know its epoch before the first batch: refused.
    with pytest.raises(ConfigError, match=r"Lightning starts epoch 2, but this loader already handed out a batch of epoch 0"):
        _run(data, tmp_path / "scores", tmp_path / "d", [], ckpt=tmp_path / "end.ckpt", restore=False)


def test_lightning_fit_over_the_loader_itself_prunes(tmp_path: Path) -> None:
    """``train_dataloaders=loader``: Lightning's ``sampler.set_epoch`` reaches the loader."""
    write_dataset(tmp_path / "data")
    ds = open_dataset(tmp_path / "data")
    store = ScoreStore(tmp_path / "scores", len(ds), ds.fingerprint, flush_interval_s=None)
    loader = StreamingLoader(
        ds, batch_size=BATCH, policy=make_policy("infobatch", delta=DELTA), store=store, num_epochs=EPOCHS, seed=7
    )
    net = Net(loader, store)
    try:
        _trainer(tmp_path, []).fit(net, train_dataloaders=loader)
    finally:
        store.close()
        loader.close()
    assert [net.stats[e].epoch for e in range(EPOCHS)] == list(range(EPOCHS))
    skipped = [net.stats[e].samples_skipped for e in range(EPOCHS)]
    assert skipped[0] == skipped[3] == skipped[4] == 0 and skipped[1] > 0 and skipped[2] > 0, skipped
    assert [len([s for s in net.steps if s[0] == e]) for e in range(EPOCHS)] == [
        net.stats[e].batches for e in range(EPOCHS)
    ]


def test_pruning_checkpoint_needs_the_adapter_and_a_stateful_store(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", n=50)
    loader = StreamingLoader(open_dataset(tmp_path / "data"), batch_size=10, num_epochs=1)
    with pytest.raises(ConfigError, match=r"must be the as_lightning\(loader\) adapter"):
        PruningCheckpoint(loader, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"has no state_dict\(\)"):
        PruningCheckpoint(as_lightning(loader), object())  # type: ignore[arg-type]
    loader.close()


def test_pruning_checkpoint_refuses_a_checkpoint_of_another_rank_count(tmp_path: Path) -> None:
    from shardprune.errors import CheckpointMismatchError

    write_dataset(tmp_path / "data", n=50)
    ds = open_dataset(tmp_path / "data")
    with ScoreStore(tmp_path / "scores", len(ds), ds.fingerprint) as store, \
            StreamingLoader(ds, batch_size=10, num_epochs=1, store=store) as loader:
        callback = PruningCheckpoint(as_lightning(loader), store)
        state = callback.state_dict()  # one process: no "loaders"
        assert "loaders" not in state
        two = dict(state, loaders=[state["loader"], state["loader"]])  # as 2 DDP ranks write it
        with pytest.raises(CheckpointMismatchError, match=r"loader positions of 2 rank\(s\), and this run has 1"):
            callback.load_state_dict(two)
        callback.load_state_dict(state)  # the same rank count: restored
