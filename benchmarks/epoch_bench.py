"""Epoch boundaries at ImageNet scale: how long the training thread waits between epochs.

    python benchmarks/epoch_bench.py                      # 1,281,167 samples, 1,000 shards, InfoBatch
    python benchmarks/epoch_bench.py --epochs 3 --workers 2 --explicit
    python benchmarks/epoch_bench.py --help

Input: a synthetic dataset with ImageNet's sample count, built once under ``--root``: one
real tar shard of ``ceil(N / shards)`` tiny samples (written by shardprune's converter),
and ``--shards`` shard entries that are hard links to it, with a manifest that tiles the
real shard's rows (each row's offset, length and CRC32 are real, so every read verifies).
Planning, I/O planning and the hand-off see 1,281,167 samples in 1,000 shards; what a
sample holds (a 16-byte array) keeps one epoch's reading to seconds.

The run: one loader, InfoBatch (r = 0.5) over a fixed "seen" score snapshot (random
losses, so about a third of the samples is pruned every epoch), ``--epochs`` passes with
``iter()`` alone (or ``set_epoch(e)`` before each with ``--explicit``), and a consumer that
does nothing but take batches. Reported:

* ``first batch``: from the loader's construction to the first batch of epoch 0 (worker
  start, planning of epoch 0, first reads).
* ``boundary e -> e+1``: the time the training thread spent inside the loader from the
  moment it asked for the batch after the last of epoch e (``StopIteration``, then
  ``set_epoch`` with ``--explicit``, ``iter()`` and the first ``next()`` of e+1) until it
  had the first batch of e+1, minus the median time it waited for a batch in epoch e+1:
  what the epoch change cost the training thread (the target is <= 50 ms). With
  ``--step-ms`` the consumer sleeps after each batch like a training step (on a GPU the
  Python thread mostly waits too), which gives the loader's background work time to run;
  ``--tail`` applies it only near the epoch ends, so a run takes minutes.
* ``epoch``: seconds per epoch and samples per second.

The same script runs against another checkout (``PYTHONPATH=/path/to/checkout``) with
``--explicit`` (older loaders have no automatic epochs), to compare with main.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(1, str(Path(__file__).resolve().parent))  # machineinfo; PYTHONPATH may name another checkout

N_IMAGENET = 1_281_167


class SeenScores:
    """A score source that always returns the same seen snapshot (random positive losses)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        from shardprune.scores.snapshot import ScoreSnapshot, fresh_columns

        rng = np.random.default_rng(seed)
        cols = fresh_columns(n)
        loss = rng.gamma(2.0, 0.5, n).astype(np.float32)
        cols["loss"] = cols["loss_ema"] = loss
        cols["visits"] = np.full(n, 1, dtype=np.int32)
        cols["last_epoch"] = np.zeros(n, dtype=np.int32)
        self._snap = ScoreSnapshot.from_columns(cols)

    def snapshot(self) -> Any:
        return self._snap


def build(root: Path, n: int, shards: int) -> Path:
    """The synthetic dataset at ``root`` (built once; see the module docstring)."""
    from shardprune.format.header import Header, ShardInfo
    from shardprune.format.manifest import Manifest, sha256
    from shardprune.format.writer import DatasetWriter
    from shardprune.sources.base import ArraySource

    if (root / "shardprune.json").exists():
        return root
    per = -(-n // shards)
    seed = root.parent / (root.name + "-one-shard")
    if not (seed / "shardprune.json").exists():
        x = np.arange(per * 4, dtype=np.float32).reshape(per, 4)
        DatasetWriter(seed, shard_format="tar", max_samples=per).write(
            ArraySource(x, np.arange(per) % 1000, num_classes=1000)
        )
    from shardprune.dataset import open_dataset

    one = open_dataset(seed)
    (src_info,) = one.header.shards
    m = one.manifest
    counts = np.full(shards, n // shards, dtype=np.int64)
    counts[: n % shards] += 1
    rows = np.concatenate([np.arange(c) for c in counts])
    shard = np.repeat(np.arange(shards), counts)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    infos = []
    for s in range(shards):
        path = f"shards/{s:06d}.tar"
        if not (root / path).exists():
            os.link(seed / src_info.path, root / path)
        infos.append(ShardInfo(path=path, bytes=src_info.bytes, samples=int(counts[s])))
    manifest = Manifest.from_columns(shard, m.offset[rows], m.length[rows], m.label[rows], m.crc32[rows])
    data = manifest.to_bytes()
    (root / "manifest.arrow").write_bytes(data)
    header = Header(
        num_samples=n, shard_format="tar", fields=dict(one.header.fields), shards=tuple(infos),
        manifest_sha256=sha256(data), num_classes=1000, source={"synthetic": "epoch_bench.py", "rows_per_shard": per},
    )
    (root / "shardprune.json").write_text(header.to_json())
    return root


def run(args: argparse.Namespace) -> dict[str, Any]:
    from shardprune.dataset import open_dataset
    from shardprune.loader import StreamingLoader
    from shardprune.policies import make_policy

    ds = open_dataset(build(args.root, args.samples, args.shards))
    scores = SeenScores(len(ds))
    extra = {} if args.plan_ahead is None else {"plan_ahead": args.plan_ahead}
    t0 = time.perf_counter()
    loader = StreamingLoader(ds, batch_size=args.batch_size, policy=make_policy("infobatch", prune_ratio=0.5),
                             store=scores, num_epochs=args.epochs, num_workers=args.workers, decode=False,
                             mixup=False, **extra)
    step = args.step_ms / 1e3
    epochs: list[dict[str, Any]] = []
    pending = 0.0  # time blocked in the loader since the previous epoch's last batch
    first = 0.0
    for epoch in range(args.epochs):
        start = time.perf_counter()
        if args.explicit:
            loader.set_epoch(epoch)
        it = iter(loader)
        pending += time.perf_counter() - start
        waits: list[float] = []
        n = 0
        while True:
            t = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                ended = time.perf_counter() - t
                break
            waits.append(time.perf_counter() - t)
            if not waits[1:]:
                first = time.perf_counter() - t0 if epoch == 0 else first
                n = loader.plan.num_batches if loader.plan is not None else 0
            i = len(waits) - 1
            if step and (args.tail is None or i >= n - args.tail or i < args.tail):
                time.sleep(step)  # the training step: the GPU works, the Python thread waits
        median = statistics.median(waits[1:]) if len(waits) > 1 else 0.0
        epochs.append({"epoch": epoch, "batches": len(waits), "seconds": time.perf_counter() - start,
                       "blocked_first_s": pending + (waits[0] if waits else 0.0), "median_wait_s": median,
                       "blocked_parts_s": {"previous_end_and_start": pending, "first_next": waits[0] if waits else 0.0}})
        pending = ended
        print(f"# epoch {epoch}: {len(waits)} batches in {epochs[-1]['seconds']:.2f} s", flush=True)
    loader.close()
    boundaries = [
        {"from": e - 1, "blocked_s": epochs[e]["blocked_first_s"], "median_wait_s": epochs[e]["median_wait_s"],
         "parts_s": epochs[e]["blocked_parts_s"],
         "stall_s": epochs[e]["blocked_first_s"] - epochs[e]["median_wait_s"]}
        for e in range(1, len(epochs))
    ]
    return {"first_batch_s": first, "boundaries": boundaries, "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path(".bench") / "imagenet-synthetic", help="dataset (built once)")
    p.add_argument("--samples", type=int, default=N_IMAGENET, help="samples (default 1,281,167)")
    p.add_argument("--shards", type=int, default=1000, help="shards (default 1,000)")
    p.add_argument("--epochs", type=int, default=3, help="epochs (default 3: two boundaries)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--explicit", action="store_true", help="call set_epoch(e) before each epoch")
    p.add_argument("--step-ms", type=float, default=0.0, help="simulated training step per batch (sleep; default 0)")
    p.add_argument("--tail", type=int, default=None,
                   help="sleep only for the first and last TAIL batches of each epoch (keeps runs short)")
    p.add_argument("--plan-ahead", type=int, default=None, help="StreamingLoader(plan_ahead=) (default: the loader's)")
    p.add_argument("--out", type=Path, default=None, help="append one JSON line here")
    args = p.parse_args(argv)
    from machineinfo import machine_info  # benchmarks/ is on sys.path

    import shardprune

    info = machine_info()
    print(f"# epoch_bench {' '.join(sys.argv[1:])}\n# shardprune from {Path(shardprune.__file__).parent}\n"
          f"# machine: {json.dumps(info)}", flush=True)
    result = run(args)
    print(f"first batch: {result['first_batch_s']:.3f} s")
    for b in result["boundaries"]:
        print(f"boundary {b['from']} -> {b['from'] + 1}: blocked {b['blocked_s'] * 1e3:.1f} ms, median wait per batch "
              f"{b['median_wait_s'] * 1e3:.1f} ms, stall {b['stall_s'] * 1e3:.1f} ms "
              f"(end of e + start of e+1 {b['parts_s']['previous_end_and_start'] * 1e3:.1f} ms, "
              f"first next() {b['parts_s']['first_next'] * 1e3:.1f} ms)")
    for e in result["epochs"]:
        print(f"epoch {e['epoch']}: {e['batches']} batches, {e['seconds']:.2f} s")
    if args.out is not None:
        with open(args.out, "a") as f:
            f.write(json.dumps({**result, "args": {k: str(v) for k, v in vars(args).items()}, "machine": info}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
