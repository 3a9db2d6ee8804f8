"""A Lightning DDP training script (2 CPU processes, gloo), run by tests/test_loader_lightning_ddp.py.

Lightning's DDP launcher starts rank 1 by running this script again, so the script is a
file, not a test function. Usage::

    python lightning_ddp_script.py DATA OUT setup|module-level|stop|resume

``setup``: the README's pattern, the store and loader made in ``LightningModule.setup``
(the process group exists there). ``module-level``: both made at import, before the process
group exists, as a single-process script would: the loader must refuse with a clear error.
``stop``: as ``setup``, but saves ``OUT/mid.ckpt`` after batch :data:`STOP_AFTER` of epoch
:data:`STOP_EPOCH` and stops there (a preempted job); ``resume``: ``fit(ckpt_path=OUT/mid.ckpt)``.
Each rank writes ``OUT/rank<r>.json``: the ids of every batch it trained on, per epoch, and
the loader's epoch statistics.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from shardprune import ScoreStore, StreamingLoader, open_dataset, weighted_loss
from shardprune.dist import DistributedScores
from shardprune.loader.adapters import as_lightning
from shardprune.loader.lightning_callback import PruningCheckpoint

DATA, OUT, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
EPOCHS, BATCH = 3, 32
STOP_EPOCH, STOP_AFTER = 1, 2


def make(store: Any) -> Any:
    return as_lightning(StreamingLoader(DATA, batch_size=BATCH, policy="infobatch", store=store,
                                        num_epochs=EPOCHS, seed=0))


if MODE == "module-level":
    ds = open_dataset(DATA)
    EARLY_STORE: Any = ScoreStore(f"{OUT}/scores", len(ds), ds.fingerprint)
    EARLY_DATA = make(EARLY_STORE)


class Module(L.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(5, 5)
        self.seen: dict[int, list[int]] = {}
        self.stats: dict[int, Any] = {}
        if MODE == "module-level":
            self.store, self.data = EARLY_STORE, EARLY_DATA

    def setup(self, stage: str) -> None:
        if MODE != "module-level":
            ds = open_dataset(DATA)
            self.store = DistributedScores.open(f"{OUT}/scores", len(ds), ds.fingerprint)
            self.data = make(self.store)

    def train_dataloader(self) -> Any:
        return self.data

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = F.cross_entropy(self.fc(batch["npy"][:, 1:]), batch["label"], reduction="none")
        self.seen.setdefault(self.current_epoch, []).extend(batch["ids"].tolist())
        return weighted_loss(batch, losses, self.store)

    def on_train_epoch_end(self) -> None:
        self.stats[self.current_epoch] = dict(vars(self.data.loader.epoch_stats))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class StopMidEpoch(L.Callback):  # type: ignore[misc]
    """Save a checkpoint after batch STOP_AFTER of epoch STOP_EPOCH, then stop training there."""

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == STOP_EPOCH and batch_idx == STOP_AFTER - 1:
            trainer.save_checkpoint(f"{OUT}/mid.ckpt")  # every rank calls it; rank 0 writes the file
            trainer.should_stop = True


def main() -> None:
    module = Module()
    callbacks: list[Any] = [PruningCheckpoint(lambda: module.data, lambda: module.store)]
    if MODE == "stop":
        callbacks.append(StopMidEpoch())
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy="ddp", callbacks=callbacks,
                        enable_progress_bar=False, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(module, ckpt_path=f"{OUT}/mid.ckpt" if MODE == "resume" else None)
    rank = trainer.global_rank
    module.store.close()
    with open(f"{OUT}/rank{rank}.json", "w") as f:
        json.dump({"seen": module.seen, "stats": module.stats, "world": trainer.world_size}, f, default=str)


if __name__ == "__main__":
    main()
