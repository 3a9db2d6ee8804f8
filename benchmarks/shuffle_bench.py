"""Shuffle modes: planning time, batch quality vs I/O cost at an ImageNet layout, local epoch time.

Run by hand (never from tests); results go to benchmarks/results/shuffle.md.

    python benchmarks/shuffle_bench.py plan-time            # make_plan at 1,281,167 samples / 1,000 shards
    python benchmarks/shuffle_bench.py layout               # quality / requests / bytes per mode (planner only)
    python benchmarks/shuffle_bench.py epoch --samples 20000 # real class-sorted tar dataset, local epoch time
    python benchmarks/shuffle_bench.py train                # digits MLP: class-sorted vs shuffled shards

``plan-time --modes window`` also runs on a checkout older than the shuffle modes (the
"before" number: ``PYTHONPATH=<old checkout> python benchmarks/shuffle_bench.py plan-time
--modes window``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardprune.loader.plan import PlanConfig, make_plan  # noqa: E402

#: The ImageNet-1k train layout of issue 12: class-sorted, ~2,400 samples per 256 MiB shard.
IMAGENET_SAMPLES = 1_281_167
IMAGENET_CLASSES = 1000
IMAGENET_SHARDS = 1000
SAMPLE_BYTES = 110_000


def machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}"


def imagenet_layout(samples: int = IMAGENET_SAMPLES, shards: int = IMAGENET_SHARDS) -> dict[str, Any]:
    """Class-sorted manifest columns: labels in blocks, samples back to back in their shards."""
    labels = (np.arange(samples) * IMAGENET_CLASSES // samples).astype(np.int64)
    shard = (np.arange(samples) * shards // samples).astype(np.int64)
    starts = np.searchsorted(shard, np.arange(shards))
    offset = (np.arange(samples) - starts[shard]) * SAMPLE_BYTES
    length = np.full(samples, SAMPLE_BYTES, dtype=np.int64)
    return {"labels": labels, "shard": shard, "offset": offset, "length": length, "num_shards": shards}


def plan_time(args: argparse.Namespace) -> None:
    lay = imagenet_layout()
    keep = np.random.default_rng(0).random(IMAGENET_SAMPLES) < args.keep
    weights = np.ones(IMAGENET_SAMPLES, dtype=np.float32)
    print(f"# make_plan, {IMAGENET_SAMPLES:,} samples / {IMAGENET_SHARDS:,} shards, keep {args.keep}, {machine()}")
    # CPU time as well as wall time: on a shared machine the wall time includes waiting for a core.
    print("| mode | world | rank | median wall s | min wall s | median CPU s |\n|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        extra = {} if mode == "window" else {"shuffle": mode}
        for world in (1, 8):
            times, cpu = [], []
            for epoch in range(args.rounds):
                cfg = PlanConfig(seed=0, batch_size=256, rank=0, world_size=world, **extra)
                t, c = time.perf_counter(), time.process_time()
                make_plan(keep, weights, lay["shard"], lay["offset"], IMAGENET_SHARDS, cfg, epoch)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            print(f"| {mode} | {world} | 0 | {statistics.median(times):.3f} | {min(times):.3f} | "
                  f"{statistics.median(cpu):.3f} |")


def layout(args: argparse.Namespace) -> None:
    from shardprune.loader.quality import TABLE_HEADER, manifest_report

    lay = imagenet_layout()
    if args.converted:
        # What tools/make_shards.py writes by default: the same input in the converter's permutation.
        from shardprune.format.permute import input_permutation

        lay["labels"] = lay["labels"][input_permutation(IMAGENET_SAMPLES, 0)]
    print(
        f"# ImageNet-like {'converter-shuffled' if args.converted else 'class-sorted'} layout: {IMAGENET_SAMPLES:,} samples, {IMAGENET_CLASSES} classes, "
        f"{IMAGENET_SHARDS} shards, {SAMPLE_BYTES:,} B/sample, world {args.world}, batch {args.batch}, "
        f"keep {args.keep}, {machine()}"
    )
    print(TABLE_HEADER.replace("| shuffle |", "| shuffle | block |").replace("|---|", "|---|---|", 1))
    grid: list[tuple[str, str, int]] = [("local", "window", 8), ("local", "global", 8)]
    grid += [("remote", "window", 8), ("remote", "global", 8)]
    grid += [("remote", "block", k) for k in (int(v) for v in args.blocks.split(","))]
    for storage, mode, k in grid:
        if args.only and mode not in args.only.split(","):
            continue
        t = time.perf_counter()
        r = manifest_report(
            lay["labels"], lay["shard"], lay["offset"], lay["length"], lay["num_shards"],
            batch_size=args.batch, world_size=args.world, storage=storage, shuffle=mode, shuffle_block=k,
            keep_fraction=args.keep,
        )  # fmt: skip
        block = str(k) if mode == "block" else "-"
        row = r.row().replace(f"| {mode} |", f"| {mode} | {block} |", 1)
        print(f"{row}  <!-- {time.perf_counter() - t:.0f} s -->", flush=True)


def _class_sorted_tar(root: Path, samples: int, classes: int, nbytes: int) -> None:
    from shardprune.format.writer import DatasetWriter
    from shardprune.sources.base import ArraySource

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (samples, nbytes), dtype=np.uint8)
    y = np.arange(samples) * classes // samples
    DatasetWriter(root, max_bytes=args_max_bytes(samples, nbytes), keep_order=True).write(
        ArraySource(x, y, num_classes=classes)
    )


def args_max_bytes(samples: int, nbytes: int) -> int:
    # About 20 shards, like a small slice of a 1,000-shard dataset.
    return max(1, samples // 20) * (nbytes + 1024)


def epoch(args: argparse.Namespace) -> None:
    from shardprune import StreamingLoader, open_dataset

    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="shuffle-bench-")) / "ds"
    if not (root / "shardprune.json").exists():
        _class_sorted_tar(root, args.samples, args.classes, args.nbytes)
    ds = open_dataset(root)
    print(
        f"# local epoch, {len(ds):,} samples of {args.nbytes:,} B in {len(ds.header.shards)} class-sorted tar shards "
        f"({args.classes} classes), batch {args.batch}, {args.workers} workers, raw bytes, warm page cache, "
        f"{args.rounds} rounds alternating, {machine()}"
    )
    times: dict[str, list[float]] = {m: [] for m in args.modes.split(",")}
    units: dict[str, list[float]] = {m: [] for m in times}
    stats: dict[str, Any] = {}
    for r in range(args.rounds):
        for mode in times:
            loader = StreamingLoader(ds, batch_size=args.batch, num_epochs=args.rounds, seed=0, shuffle=mode,
                                     num_workers=args.workers, decode=False)
            loader.set_epoch(r)
            # The read-unit builder (loader/ioplan.py) runs once per epoch at iter(); timed apart
            # because its per-block Python loop is what separates the modes (see results).
            t = time.perf_counter()
            loader.read_units()
            units[mode].append(time.perf_counter() - t)
            t = time.perf_counter()
            count = 0
            for batch in loader:
                count += len(batch["ids"])
            times[mode].append(time.perf_counter() - t)
            stats[mode] = (count, loader.epoch_stats)
            loader.shutdown()
    print("| mode | median s | min s | samples/s (median) | read-unit build s (median) | epoch minus build s | "
          "samples | bytes read / kept | requests |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, ts in times.items():
        count, st = stats[mode]
        med = statistics.median(ts)
        ratio = st.bytes_read / st.bytes_kept if st.bytes_kept else float("nan")
        build = statistics.median(units[mode])
        print(f"| {mode} | {med:.2f} | {min(ts):.2f} | {count / med:,.0f} | {build:.2f} | {med - build:.2f} | "
              f"{count:,} | {ratio:.3f} | {st.requests:,} |")


def train(args: argparse.Namespace) -> None:
    """Digits MLP through the loader: class-sorted shards (window / global) vs converter-shuffled."""
    import torch
    import torch.nn.functional as F

    from shardprune import StreamingLoader, open_dataset
    from shardprune.demo.trainer import InputToFloat
    from shardprune.format.writer import DatasetWriter
    from shardprune.models import MLP
    from shardprune.sources.base import ArraySource
    from shardprune.sources.builtin import digits_source

    root = Path(tempfile.mkdtemp(prefix="shuffle-train-"))
    src = digits_source("train")
    order = np.argsort(src.labels, kind="stable")  # class-sorted input, as imagefolder writes it
    x, y = np.asarray(src.x)[order], src.labels[order]
    DatasetWriter(root / "sorted", shard_format="zarr", max_samples=args.shard, keep_order=True).write(
        ArraySource(x, y, num_classes=10))
    DatasetWriter(root / "shuffled", shard_format="zarr", max_samples=args.shard).write(
        ArraySource(x, y, num_classes=10))
    test = digits_source("test")
    tx = torch.from_numpy(np.asarray(test.x, dtype=np.float32).reshape(len(test), -1))
    ty = torch.from_numpy(test.labels)
    print(f"# digits MLP, {len(y)} train samples class-sorted into {-(-len(y) // args.shard)} zarr shards, "
          f"batch {args.batch}, shuffle_buffer {args.buffer}, {args.epochs} epochs, Adam lr {args.lr}, "
          f"full data, seeds {args.seeds}, {machine()}")
    print("| data | shuffle | distinct labels / batch (epoch 0) | test acc mean | std | per seed |\n|---|---|---|---|---|---|")
    runs = [("sorted", "window"), ("sorted", "global"), ("shuffled", "window")]
    for data, mode in runs:
        accs, distinct = [], 0.0
        for seed in (int(v) for v in args.seeds.split(",")):
            torch.manual_seed(seed)
            model = MLP(64, 10, input_scale=1 / 16)
            opt = torch.optim.Adam(model.parameters(), lr=args.lr)
            ds = open_dataset(root / data)
            with StreamingLoader(ds, batch_size=args.batch, num_epochs=args.epochs, seed=seed, shuffle=mode,
                                 shuffle_buffer=args.buffer, transform=InputToFloat("x"), mixup=False) as loader:
                for epoch in range(args.epochs):
                    loader.set_epoch(epoch)
                    counts = []
                    for batch in loader:
                        counts.append(len(set(batch["label"].tolist())))
                        loss = F.cross_entropy(model(batch["x"].reshape(len(batch["ids"]), -1)), batch["label"])
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                    if epoch == 0:
                        distinct = float(np.mean(counts))
            with torch.no_grad():
                accs.append(float((model(tx).argmax(1) == ty).float().mean()))
        print(f"| {data} | {mode} | {distinct:.1f} | {np.mean(accs):.4f} | {np.std(accs):.4f} | "
              f"{', '.join(f'{a:.4f}' for a in accs)} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("plan-time", help="make_plan time at the ImageNet layout")
    a.add_argument("--modes", default="window,block,global")
    a.add_argument("--keep", type=float, default=0.6, help="fraction kept (random)")
    a.add_argument("--rounds", type=int, default=5)
    b = sub.add_parser("layout", help="quality and I/O cost per mode at the ImageNet layout (planner only)")
    b.add_argument("--world", type=int, default=8)
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--keep", type=float, default=1.0, help="fraction kept (random)")
    b.add_argument("--blocks", default="4,8,12,16", help="block sizes of the block mode")
    b.add_argument("--converted", action="store_true", help="labels in the converter's default (shuffled) order")
    b.add_argument("--only", default="", help="comma-separated modes to run (default all)")
    c = sub.add_parser("epoch", help="local epoch time per mode on a real class-sorted tar dataset")
    c.add_argument("--data", default=None, help="existing dataset (default: generate one in a temp dir)")
    c.add_argument("--samples", type=int, default=20_000)
    c.add_argument("--classes", type=int, default=100)
    c.add_argument("--nbytes", type=int, default=4096)
    c.add_argument("--batch", type=int, default=256)
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--rounds", type=int, default=5)
    c.add_argument("--modes", default="window,global,block")
    d = sub.add_parser("train", help="digits MLP on class-sorted vs converter-shuffled shards, per mode")
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--batch", type=int, default=32)
    d.add_argument("--buffer", type=int, default=32, help="shuffle buffer (small, as 1,024 of 1.28M)")
    d.add_argument("--shard", type=int, default=40, help="samples per shard")
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    {"plan-time": plan_time, "layout": layout, "epoch": epoch, "train": train}[args.command](args)


if __name__ == "__main__":
    main()
