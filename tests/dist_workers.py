"""Spawn targets for the distributed tests: real processes, real gloo ranks on one machine.

:func:`launch` starts ``world_size`` processes with the ``spawn`` context; each joins a
gloo process group through a FileStore in the test's tmp directory (no ports to pick),
runs one target of this module, and writes its results as JSON into ``out``. Targets
never depend on timing: the only deadline is the process group timeout, which turns a
hang into a failure.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

#: Collective timeout inside the workers: a dead peer fails the survivors within it.
PG_TIMEOUT_S = 60


def fake_losses(ids: np.ndarray, epoch: int) -> np.ndarray:
    """A deterministic 'loss' per (sample, epoch), so every run can be compared exactly."""
    ids = np.asarray(ids, dtype=np.int64)
    return (((ids * 7919 + epoch * 104729) % 1000) / 250.0).astype(np.float32)


def _entry(target: str, rank: int, world: int, init_file: str, out: str, kwargs: dict[str, Any]) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=PG_TIMEOUT_S)
    )
    try:
        globals()[target](rank, world, Path(out), **kwargs)
    except BaseException:
        (Path(out) / f"error{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a group broken by a dead peer cannot always be torn down
            pass


def launch(target: str, world: int, tmp: Path, *, join_s: float = 240.0, **kwargs: Any) -> list[int | None]:
    """Run ``target`` on ``world`` spawned ranks; return their exit codes (None: still alive, killed)."""
    out = tmp / f"out-{target}-{world}"
    out.mkdir(parents=True, exist_ok=True)
    init_file = tmp / f"pg-{target}-{world}-{os.getpid()}-{len(list(tmp.iterdir()))}"
    ctx = mp.get_context("spawn")
    # A rank that aborts (SIGABRT) prints every thread's Python stack into the test's output.
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    procs = [
        ctx.Process(target=_entry, args=(target, r, world, str(init_file), str(out), kwargs)) for r in range(world)
    ]
    for p in procs:
        p.start()
    codes: list[int | None] = []
    for p in procs:
        p.join(join_s)
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes


def errors(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(out.glob("error*.txt")))


# -- targets ------------------------------------------------------------------------------
def exchange(rank: int, world: int, out: Path, *, store: str) -> None:
    """Each rank sends a different number of ids above 2**24 (and one float tensor that must be refused).

    Then two failures every rank must see: replicas that diverged (rank 1 feeds its own
    copy directly) and a store that rank 0 cannot open.
    """
    from shardprune.dist import DistributedScores, exchange_reports
    from shardprune.dist.collectives import exchange_with_headers
    from shardprune.errors import DistributedError, ScoreStoreMismatchError

    big = [2**24 + 1, 2**40 + 3, 2**62 + 5 + rank, 2**53 + 1]
    ids = torch.tensor(big[: 1 + rank % 4] + [rank], dtype=torch.int64)
    losses = torch.arange(ids.shape[0], dtype=torch.float32) + 0.25 + rank
    got = exchange_reports(ids, losses)
    refused = ""
    try:
        exchange_reports(ids.to(torch.float32), losses)
    except DistributedError as exc:
        refused = str(exc)
    headed = []
    capacity = 0
    for _ in range(2):  # the first call learns the capacity (2 collectives), the second needs 1
        done = exchange_with_headers([int(ids.shape[0]), 10 + rank], ids, losses, capacity)
        capacity = done.capacity
        same = done.reports.ids.tolist() == got.ids.tolist() and done.reports.losses.tolist() == got.losses.tolist()
        headed.append({"same": same, "collectives": done.collectives, "tags": done.headers[:, 1].tolist()})
    scores = DistributedScores.open(store, 100, "fp", flush_interval_s=None)
    scores.update(torch.tensor([rank]), torch.tensor([1.0]))
    if rank == 1:
        scores.store.apply(np.array([50]), np.array([2.0], dtype=np.float32), 0)
    diverged = ""
    try:
        scores.snapshot()
    except DistributedError as exc:
        diverged = str(exc)
    scores.close()
    open_error = ""
    try:
        DistributedScores.open(store, 101, "fp", flush_interval_s=None)
    except ScoreStoreMismatchError as exc:
        open_error = f"mismatch: {exc}"
    except DistributedError as exc:
        open_error = f"distributed: {exc}"
    doc = {
        "headed": headed,
        "capacity": capacity,
        "diverged": diverged,
        "open_error": open_error,
        "ids": [int(i) for i in got.ids.tolist()],
        "dtype": str(got.ids.dtype),
        "losses": got.losses.tolist(),
        "counts": got.counts,
        "refused": refused,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(doc))


def _infobatch_job(
    data: str,
    store: str,
    rank: int,
    world: int,
    *,
    batch_size: int,
    num_epochs: int,
    seed: int,
    drop_last: bool,
    sync_every: int | None,
    **policy: float,
) -> tuple[Any, Any]:
    """This rank's InfoBatch loader (r = 0.5) wired to the job's shared DistributedScores."""
    from shardprune.dist import DistributedScores, World
    from shardprune.loader import StreamingLoader
    from shardprune.policies import make_policy

    loader = StreamingLoader(
        data,
        batch_size=batch_size,
        policy=make_policy("infobatch", prune_ratio=0.5, **policy),
        num_epochs=num_epochs,
        seed=seed,
        world=World(rank, world),
        drop_last=drop_last,
        shuffle_buffer=16,
    )
    scores = DistributedScores.open(
        store, len(loader.dataset), loader.dataset.fingerprint, sync_every=sync_every, flush_interval_s=None
    )
    loader.store = scores
    return loader, scores


def epochs(
    rank: int,
    world: int,
    out: Path,
    *,
    data: str,
    store: str,
    num_epochs: int,
    batch_size: int,
    drop_last: bool,
    sync_every: int | None,
    seed: int = 0,
) -> None:
    """Run InfoBatch epochs with fake losses; record ids, weights, plans and scores per epoch."""
    from shardprune.train import weighted_loss

    loader, scores = _infobatch_job(
        data, store, rank, world, batch_size=batch_size, num_epochs=num_epochs, seed=seed, drop_last=drop_last,
        sync_every=sync_every, delta=0.75,
    )
    record: list[dict[str, Any]] = []
    for epoch in range(num_epochs):
        loader.set_epoch(epoch)
        scores.set_epoch(epoch)
        assert loader.plan is not None and loader.decision is not None and loader.snapshot is not None
        ids: list[int] = []
        weights: list[float] = []
        batches = 0
        for batch in loader:
            losses = torch.from_numpy(fake_losses(batch["ids"].numpy(), epoch)).requires_grad_()
            weighted_loss(batch, losses, scores)
            ids.extend(int(i) for i in batch["ids"])
            weights.extend(float(w) for w in batch["weights"])
            batches += 1
        record.append(
            {
                "epoch": epoch,
                "ids": ids,
                "weights": weights,
                "batches": batches,
                "planned_batches": loader.plan.num_batches,
                "kept": np.flatnonzero(loader.decision.keep).tolist(),
                "trimmed": loader.plan.trimmed,
                "padded": loader.plan.padded,
                "snapshot": loader.snapshot.fingerprint,
            }
        )
    final = scores.snapshot(pin=False)
    stats = dict(scores.stats)
    scores.close()
    stats["store_flushes"] = int(scores.store.stats["flushes"])
    stats["writer"] = int(scores.store.writer)
    loader.close()
    doc = {"epochs": record, "final": final.fingerprint, "stats": stats, "loss": final.loss.tolist()}
    (out / f"rank{rank}.json").write_text(json.dumps(doc))


def resumable(
    rank: int,
    world: int,
    out: Path,
    *,
    data: str,
    store: str,
    ckpt: str,
    mode: str,
    num_epochs: int = 3,
    batch_size: int = 8,
    every: int = 2,
    kill_at: tuple[int, int] = (1, 5),
) -> None:
    """Train with fake losses and a checkpoint every ``every`` batches.

    ``mode``: ``"reference"`` runs to the end; ``"kill"`` has rank 1 SIGKILL itself when
    it is handed batch ``kill_at[1]`` of epoch ``kill_at[0]``; ``"resume"`` loads the last
    checkpoint first. Every batch handed out is logged as ``{"epoch", "batch", "ids"}``.
    """
    from shardprune.dist import load_checkpoint, save_checkpoint
    from shardprune.train import weighted_loss

    loader, scores = _infobatch_job(
        data, store, rank, world, batch_size=batch_size, num_epochs=num_epochs, seed=7, drop_last=False,
        sync_every=batch_size,
    )
    log = (out / f"{mode}-rank{rank}.jsonl").open("a")
    first = 0
    resumed = False
    if mode == "resume":
        extra = load_checkpoint(ckpt, loader, scores)
        first = int(extra["epoch"])
        resumed = True
    for epoch in range(first, num_epochs):
        if not resumed:
            loader.set_epoch(epoch)
        resumed = False
        scores.set_epoch(epoch)
        assert loader.plan is not None
        b = loader.state_dict()["batches_yielded"]
        for batch in loader:
            if mode == "kill" and rank == 1 and (epoch, b) == tuple(kill_at):
                log.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            losses = torch.from_numpy(fake_losses(batch["ids"].numpy(), epoch))
            weighted_loss(batch, losses, scores)
            log.write(json.dumps({"epoch": epoch, "batch": b, "ids": [int(i) for i in batch["ids"]]}) + "\n")
            log.flush()
            b += 1
            if b % every == 0:
                save_checkpoint(ckpt, loader, scores, extra={"epoch": epoch})
    final = scores.snapshot(pin=False)
    scores.close()
    loader.close()
    log.close()
    (out / f"{mode}-final{rank}.json").write_text(json.dumps({"final": final.fingerprint}))


def wrong_world(rank: int, world: int, out: Path, *, data: str, store: str, ckpt: str) -> None:
    """Resume a checkpoint written by another world size; record the refusal."""
    from shardprune.dist import DistributedScores, World, load_checkpoint
    from shardprune.errors import CheckpointMismatchError
    from shardprune.loader import StreamingLoader
    from shardprune.policies import make_policy

    loader = StreamingLoader(
        data,
        batch_size=8,
        policy=make_policy("infobatch", prune_ratio=0.5),
        num_epochs=3,
        seed=7,
        world=World(rank, world),
        drop_last=False,
        shuffle_buffer=16,
    )
    scores = DistributedScores.open(store, len(loader.dataset), loader.dataset.fingerprint, flush_interval_s=None)
    loader.store = scores
    message = ""
    try:
        load_checkpoint(ckpt, loader, scores)
    except CheckpointMismatchError as exc:
        message = str(exc)
    scores.close()
    (out / f"rank{rank}.json").write_text(json.dumps({"message": message}))


def uneven(rank: int, world: int, out: Path, *, data: str, store: str, ckpt: str) -> None:
    """Rank 0 takes one batch more than the others, then every rank checkpoints: all must refuse."""
    from shardprune.dist import DistributedScores, World, save_checkpoint
    from shardprune.errors import DistributedError
    from shardprune.loader import StreamingLoader

    loader = StreamingLoader(data, batch_size=8, num_epochs=1, world=World(rank, world), prefetch_batches=0)
    scores = DistributedScores.open(store, len(loader.dataset), loader.dataset.fingerprint, flush_interval_s=None)
    loader.store = scores
    loader.set_epoch(0)
    it = iter(loader)
    if rank == 0:
        next(it)
    message = ""
    try:
        save_checkpoint(ckpt, loader, scores)
    except DistributedError as exc:
        message = str(exc)
    del it
    scores.close()
    loader.close()
    (out / f"rank{rank}.json").write_text(json.dumps({"message": message, "written": Path(ckpt).exists()}))


def dead_rank(rank: int, world: int, out: Path, *, store: str, victim: int) -> None:
    """Rank ``victim`` SIGKILLs itself after three synced steps; the others keep syncing and must
    stop with a DistributedError naming it (written to ``rank<r>.json`` before re-raising)."""
    import time

    from shardprune.dist import DistributedScores
    from shardprune.errors import DistributedError

    scores = DistributedScores.open(store, 1000, "fp", flush_interval_s=None, sync_every=None)
    for step in range(10_000):
        if rank == victim and step == 3:
            (out / "killed_at.txt").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        scores.update(torch.tensor([step % 1000]), torch.tensor([1.0]), epoch=0)
        try:
            scores.sync()
        except DistributedError as exc:
            (out / f"rank{rank}.json").write_text(json.dumps({"error": str(exc), "at": time.time(), "step": step}))
            scores.close(sync=False)
            raise


def group_released(rank: int, world: int, out: Path) -> None:
    """After a numbered collective and ``destroy_process_group``, nothing of shardprune's holds
    the group: a group kept alive is destroyed in the interpreter's final teardown, where gloo
    aborts the process ("terminate called without an active exception")."""
    import gc
    import weakref

    from shardprune.dist.collectives import all_gather_bytes

    parts = all_gather_bytes(b"x", None)
    ref = weakref.ref(dist.group.WORLD)
    dist.destroy_process_group()
    gc.collect()
    (out / f"rank{rank}.json").write_text(json.dumps({"parts": len(parts), "released": ref() is None}))
