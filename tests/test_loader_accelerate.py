"""Accelerate: the loader is not ``prepare``d; its state rides in ``save_state`` / ``load_state``.

Each rank builds its own loader (the loader already splits every epoch by rank), so
``accelerator.prepare`` takes the model and optimizer only. ``register_for_checkpointing``
saves the score store and the loader with the model; a resumed run trains exactly the
batches the interrupted one had not, and ends with the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from loader_data import write_dataset
from shardprune import ScoreStore, StreamingLoader, make_policy, open_dataset, weighted_loss

accelerate = pytest.importorskip("accelerate")

EPOCHS = 4
STOP_EPOCH, STOP_AFTER = 1, 3


def _train(data: Path, scores: Path, ckpt: Path, *, resume: bool, stop: bool) -> tuple[list[Any], torch.Tensor]:
    accelerator = accelerate.Accelerator(cpu=True)
    ds = open_dataset(data)
    store = ScoreStore(scores, len(ds), ds.fingerprint, flush_interval_s=None)
    loader = StreamingLoader(
        ds, batch_size=32, policy=make_policy("infobatch", delta=0.75), store=store, num_epochs=EPOCHS, seed=5
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(store, loader)  # restored in this order: scores first
    start = 0
    if resume:
        accelerator.load_state(str(ckpt))
        start = loader.epoch_stats.epoch  # load_state_dict planned the checkpoint's epoch
    steps: list[Any] = []
    try:
        for epoch in range(start, EPOCHS):
            loader.set_epoch(epoch)  # after a resume: continues the checkpoint's epoch
            for i, batch in enumerate(loader):
                losses = F.cross_entropy(model(batch["npy"][:, 1:]), batch["label"], reduction="none")
                loss = weighted_loss(batch, losses, store)
                opt.zero_grad()
                accelerator.backward(loss)
                opt.step()
                steps.append((epoch, batch["ids"].tolist()))
                if stop and epoch == STOP_EPOCH and i == STOP_AFTER - 1:
                    accelerator.save_state(str(ckpt))
                    return steps, torch.cat([p.detach().flatten() for p in model.parameters()])
        return steps, torch.cat([p.detach().flatten() for p in model.parameters()])
    finally:
        store.close()
        loader.close()


@pytest.mark.slow
def test_accelerate_save_state_resumes_loader_and_scores(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data)
    full, weights = _train(data, tmp_path / "ref", tmp_path / "unused", resume=False, stop=False)
    per_epoch = [len([s for s in full if s[0] == e]) for e in range(EPOCHS)]
    assert per_epoch[1] < per_epoch[0] and per_epoch[2] < per_epoch[0] and per_epoch[3] == per_epoch[0], per_epoch

    ckpt = tmp_path / "ckpt"
    head, _ = _train(data, tmp_path / "scores", ckpt, resume=False, stop=True)
    tail, resumed_weights = _train(data, tmp_path / "scores", ckpt, resume=True, stop=False)
    assert head + tail == full
    torch.testing.assert_close(resumed_weights, weights, rtol=0, atol=0)


def test_two_process_accelerate_resumes_each_rank_exactly(tmp_path: Path) -> None:
    """torchrun with 2 CPU ranks (tests/accelerate_ddp_script.py): Accelerate saves the loader's
    state from rank 0 only and loads it on both ranks; each resumes its own share exactly."""
    import json
    import os
    import subprocess
    import sys

    from loader_data import write_dataset as write

    script = Path(__file__).with_name("accelerate_ddp_script.py")
    write(tmp_path / "data")
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONPATH": str(Path(__file__).parent)}
    for out, mode in (("whole", "whole"), ("cut", "stop"), ("cut", "resume")):
        (tmp_path / out).mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
               str(tmp_path / "data"), str(tmp_path / out), mode]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        assert run.returncode == 0, (mode, run.stderr[-6000:])
    batch, stop_after = 32, 2
    for rank in (0, 1):
        whole = json.loads((tmp_path / "whole" / f"rank{rank}-whole.json").read_text())["seen"]
        stopped = json.loads((tmp_path / "cut" / f"rank{rank}-stop.json").read_text())["seen"]
        resumed = json.loads((tmp_path / "cut" / f"rank{rank}-resume.json").read_text())["seen"]
        assert stopped["0"] == whole["0"] and stopped["1"] == whole["1"][: stop_after * batch]
        assert resumed["1"] == whole["1"][stop_after * batch :]  # the rest of the epoch, this rank's share
        assert resumed["2"] == whole["2"]
    shares = [json.loads((tmp_path / "whole" / f"rank{r}-whole.json").read_text())["seen"]["1"] for r in (0, 1)]
    assert not set(shares[0]) & set(shares[1])  # two shares, not one replayed twice
