"""A Lightning DDP training script (2 CPU processes, gloo), run by tests/test_loader_lightning_ddp.py.

Lightning's DDP launcher starts rank 1 by running this script again, so the script is a
file, not a test function. Usage::

    python lightning_ddp_script.py DATA OUT setup|module-level

``setup``: the README's pattern, the store and loader made in ``LightningModule.setup``
(the process group exists there). ``module-level``: both made at import, before the process
group exists, as a single-process script would: the loader must refuse with a clear error.
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
        if MODE == "setup":
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


def main() -> None:
    module = Module()
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy="ddp",
                        callbacks=[PruningCheckpoint(lambda: module.data, lambda: module.store)],
                        enable_progress_bar=False, logger=False, enable_checkpointing=False,
                        enable_model_summary=False)
    trainer.fit(module)
    rank = trainer.global_rank
    module.store.close()
    with open(f"{OUT}/rank{rank}.json", "w") as f:
        json.dump({"seen": module.seen, "stats": module.stats, "world": trainer.world_size}, f, default=str)


if __name__ == "__main__":
    main()
