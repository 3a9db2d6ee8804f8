"""An Accelerate training script run on 2 CPU processes by torchrun (tests/test_loader_accelerate.py).

Usage::

    torchrun --nproc-per-node=2 accelerate_ddp_script.py DATA OUT whole|stop|resume

The README's Accelerate pattern under several processes: the Accelerator first (it joins the
process group), then a DistributedScores store and the loader, registered for checkpointing.
``stop`` saves the state after batch STOP_AFTER of epoch STOP_EPOCH and ends; ``resume`` loads
it and trains on. Each rank writes ``OUT/rank<r>-<mode>.json``: the ids of every batch it trained
on, per epoch.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import accelerate
import torch
import torch.nn.functional as F

from shardprune import StreamingLoader, open_dataset, weighted_loss
from shardprune.dist import DistributedScores

DATA, OUT, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
EPOCHS, BATCH = 3, 32
STOP_EPOCH, STOP_AFTER = 1, 2


def main() -> None:
    accelerator = accelerate.Accelerator(cpu=True)
    ds = open_dataset(DATA)
    store = DistributedScores.open(f"{OUT}/scores", len(ds), ds.fingerprint)
    loader = StreamingLoader(ds, batch_size=BATCH, policy="infobatch", store=store, num_epochs=EPOCHS, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(store, loader)  # scores first
    start = 0
    if MODE == "resume":
        accelerator.load_state(f"{OUT}/state")
        start = loader.epoch_stats.epoch
    seen: dict[int, list[int]] = {}
    for epoch in range(start, EPOCHS):
        loader.set_epoch(epoch)
        for batch in loader:
            losses = F.cross_entropy(model(batch["npy"][:, 1:]), batch["label"], reduction="none")
            loss = weighted_loss(batch, losses, store)
            opt.zero_grad()
            accelerator.backward(loss)
            opt.step()
            seen.setdefault(epoch, []).extend(batch["ids"].tolist())
            if MODE == "stop" and epoch == STOP_EPOCH and loader.epoch_stats.batches == STOP_AFTER:
                accelerator.save_state(f"{OUT}/state")
                break
        if MODE == "stop" and epoch == STOP_EPOCH:
            break
    store.close()
    with open(f"{OUT}/rank{accelerator.process_index}-{MODE}.json", "w") as f:
        json.dump({"seen": seen, "world": accelerator.num_processes}, f)
    loader.close()
    accelerator.end_training()


if __name__ == "__main__":
    main()
