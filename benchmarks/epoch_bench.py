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
* ``boundary e -> e+1``: the time from the last batch of epoch e to the first of e+1,
  minus the median batch interval of epoch e+1: what the training thread waited for
  the epoch change (the target is <= 50 ms).
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
    t0 = time.perf_counter()
    loader = StreamingLoader(ds, batch_size=args.batch_size, policy=make_policy("infobatch", prune_ratio=0.5),
                             store=scores, num_epochs=args.epochs, num_workers=args.workers, decode=False,
                             mixup=False)
    stamps: list[list[float]] = []
    for epoch in range(args.epochs):
        if args.explicit:
            loader.set_epoch(epoch)
        times = []
        for _ in loader:
            times.append(time.perf_counter())
        stamps.append(times)
        print(f"# epoch {epoch}: {len(times)} batches in {times[-1] - (stamps[-2][-1] if epoch else t0):.2f} s",
              flush=True)
    loader.close()
    first = stamps[0][0] - t0
    boundaries = []
    for e in range(args.epochs - 1):
        nxt = stamps[e + 1]
        median = statistics.median(np.diff(nxt).tolist())
        boundaries.append({"from": e, "gap_s": nxt[0] - stamps[e][-1], "median_interval_s": median,
                           "stall_s": nxt[0] - stamps[e][-1] - median})
    epochs = [{"epoch": e, "batches": len(t), "seconds": t[-1] - (stamps[e - 1][-1] if e else t0)}
              for e, t in enumerate(stamps)]
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
        print(f"boundary {b['from']} -> {b['from'] + 1}: gap {b['gap_s'] * 1e3:.1f} ms, median batch interval "
              f"{b['median_interval_s'] * 1e3:.1f} ms, stall {b['stall_s'] * 1e3:.1f} ms")
    for e in result["epochs"]:
        print(f"epoch {e['epoch']}: {e['batches']} batches, {e['seconds']:.2f} s")
    if args.out is not None:
        with open(args.out, "a") as f:
            f.write(json.dumps({**result, "args": {k: str(v) for k, v in vars(args).items()}, "machine": info}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
