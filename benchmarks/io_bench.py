"""Reading cost of pruned epochs: shardprune's StreamingLoader vs webdataset vs a torch DataLoader.

    python benchmarks/io_bench.py --storage local            # 20,000 JPEGs, tar shards on local disk
    python benchmarks/io_bench.py --storage s3               # a subset uploaded to a moto server
    python benchmarks/io_bench.py --mode decode --ratios 0,0.5
    python benchmarks/io_bench.py --loader-epochs 4          # one loader, 4 epochs: persistent workers
    python benchmarks/io_bench.py --help

Input: the ImageNet-like ImageFolder of ``benchmarks/make_shards_bench.py generate``
(``.bench/imagefolder``, 20,000 JPEGs of 50-200 KB) converted once to tar shards with
``tools/make_shards.py imagefolder`` (``.bench/io-tar``, 64 MB shards). For ``--storage s3``
a moto server is started in a subprocess on 127.0.0.1 and a subset (``--s3-samples``,
evenly over the classes) is converted to 1 MB shards and uploaded once: moto copies a
whole object for every range request, so large shards would measure moto, not the reader.

Pruning: a fixed keep mask per ratio r, a uniformly random subset of exactly
``round((1 - r) N)`` samples (seeded), identical for all three readers.

Readers, one epoch each, ``--workers`` worker processes, ``--batch-size``:

* ``shardprune``: ``StreamingLoader`` with the mask as its policy; only kept samples' byte
  ranges are read (local ``max_gap=0``; S3 default 16 KiB).
* ``webdataset``: ``wds.DataPipeline`` over the same tars (shards split over DataLoader
  workers), filtering with ``select`` after reading, as its users must: every byte is read.
* ``imagefolder`` (local only): ``torch.utils.data.DataLoader`` over the files, with a sampler
  over the kept ids (a sampler-based pruner on one-file-per-sample storage).

``--mode raw`` yields the samples' bytes (no decode) from all three, so the comparison is
about reading; ``--mode decode`` decodes the JPEG to a uint8 CHW array in all three.

Reported per (reader, ratio): epoch seconds, samples/s, bytes read / bytes of the kept
samples (measured: shardprune's counters, a byte-counting stream for webdataset, the
sum of file sizes read for imagefolder), requests per kept sample (shardprune), and the
epoch time relative to the same reader at r = 0, and ``disk/kept``: what the block device
read during the run (``/proc/diskstats``; includes kernel readahead, and any other process's
reads on a shared machine) over the kept bytes. ``--drop-caches`` (root only) drops the
page cache before every local run, so local numbers are cold-cache reads.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# benchmarks/ is on sys.path when run as a script
from maskpolicy import MaskPolicy, keep_mask  # noqa: E402

from shardprune.dataset import ShardedDataset, open_dataset  # noqa: E402
from shardprune.loader import StreamingLoader  # noqa: E402

BENCH = REPO / ".bench"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy()


# -- shardprune -----------------------------------------------------------------------------
def run_shardprune(ds: ShardedDataset, keep: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """One loader, ``--loader-epochs`` passes (auto epochs): the first pass starts the workers,
    later ones reuse them and are planned behind their predecessor. Reported: the median of
    the passes after the first (the first alone when there is one), and the first."""
    epochs = max(1, int(getattr(args, "loader_epochs", 1)))
    loader = StreamingLoader(
        ds, batch_size=args.batch_size, policy=MaskPolicy(keep), num_epochs=epochs, num_workers=args.workers,
        decode=args.mode == "decode", mixup=False, drop_last=False, fields=["jpg"], shuffle_buffer=1024,
        io_concurrency=getattr(args, "io_concurrency", None),
    )
    times: list[float] = []
    samples = 0
    stats = []
    for epoch in range(epochs):
        if epoch and args.drop_caches and args.storage == "local":
            drop_caches()
        t0 = time.perf_counter()
        samples = 0
        for batch in loader:
            samples += len(batch["ids"])
        times.append(time.perf_counter() - t0)
        stats.append(loader.epoch_stats)
    loader.close()
    s = stats[-1]
    secs = times[0] if epochs == 1 else sorted(times[1:])[(epochs - 1) // 2]
    return {"samples": samples, "seconds": secs, "bytes_read": s.bytes_read, "requests": s.requests,
            "bytes_kept": s.bytes_kept, "gap_bytes": s.gap_bytes, "first_epoch_s": times[0]}


# -- webdataset -----------------------------------------------------------------------------
class _Counted(io.RawIOBase):
    """A read-only stream that adds the bytes it returns to a shared counter."""

    def __init__(self, stream: Any, counter: Any) -> None:
        self.stream = stream
        self.counter = counter

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.stream.read(len(buf))
        n = len(data)
        buf[:n] = data
        with self.counter.get_lock():
            self.counter.value += n
        return n

    def close(self) -> None:
        self.stream.close()
        super().close()


def _wds_dataset(urls: list[str], keep: np.ndarray, counter: Any, mode: str, storage_options: dict[str, Any] | None,
                 batch_size: int) -> Any:
    import webdataset as wds

    def open_streams(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        fs = None
        for sample in src:
            url = sample["url"]
            if url.startswith("s3://"):
                if fs is None:
                    import s3fs

                    fs = s3fs.S3FileSystem(skip_instance_cache=True, **(storage_options or {}))
                raw = fs.open(url, "rb", block_size=8 << 20, cache_type="readahead")
            else:
                raw = open(url, "rb", buffering=0)
            yield {"url": url, "stream": io.BufferedReader(_Counted(raw, counter), buffer_size=1 << 20)}

    def kept(sample: dict[str, Any]) -> bool:
        return bool(keep[int(sample["__key__"])])

    def to_item(sample: dict[str, Any]) -> tuple[int, Any]:
        data = sample["jpg"]
        return int(sample["__key__"]), decode_jpeg(data) if mode == "decode" else data

    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.detshuffle(100),  # shard order, the same in every worker
        wds.split_by_worker,
        open_streams,
        wds.tariterators.tar_file_expander,
        wds.tariterators.group_by_keys,
        wds.select(kept),
        wds.shuffle(1000),
        wds.map(to_item),
        wds.batched(batch_size, collation_fn=list, partial=True),
    )


def run_webdataset(urls: list[str], keep: np.ndarray, args: argparse.Namespace,
                   storage_options: dict[str, Any] | None) -> dict[str, Any]:
    import torch.utils.data as tud

    counter = mp.get_context("fork").Value("q", 0)
    dataset = _wds_dataset(urls, keep, counter, args.mode, storage_options, args.batch_size)
    t0 = time.perf_counter()
    loader = tud.DataLoader(dataset, batch_size=None, num_workers=args.workers,
                            multiprocessing_context="fork" if args.workers else None)
    samples = sum(len(batch) for batch in loader)
    secs = time.perf_counter() - t0
    return {"samples": samples, "seconds": secs, "bytes_read": int(counter.value), "requests": None}


# -- torch DataLoader over the ImageFolder --------------------------------------------------
class FolderDataset:
    """Map-style dataset over the ImageFolder files in the converter's id order."""

    def __init__(self, root: Path, mode: str) -> None:
        self.files: list[str] = []
        for cls in sorted(d for d in os.listdir(root) if not d.startswith(".")):
            for dirpath, dirnames, filenames in os.walk(root / cls):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                self.files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, int, Any]:
        with open(self.files[i], "rb") as f:
            data = f.read()
        return i, len(data), decode_jpeg(data) if self.mode == "decode" else data


def _collate(items: list[Any]) -> list[Any]:
    return items


def run_imagefolder(folder: FolderDataset, keep: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.utils.data as tud

    ids = np.flatnonzero(keep)
    sampler = tud.SubsetRandomSampler(ids.tolist(), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    loader: tud.DataLoader[Any] = tud.DataLoader(
        folder,  # type: ignore[arg-type]
        batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, collate_fn=_collate,
        multiprocessing_context="fork" if args.workers else None,
    )
    samples = nbytes = 0
    for batch in loader:
        samples += len(batch)
        nbytes += sum(n for _, n, _ in batch)
    secs = time.perf_counter() - t0
    return {"samples": samples, "seconds": secs, "bytes_read": nbytes, "requests": samples}


# -- storage setup --------------------------------------------------------------------------
def disk_read_bytes() -> int:
    """Bytes read by the block devices since boot (whole disks in /proc/diskstats; 0 if unreadable)."""
    total = 0
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                parts = line.split()
                name = parts[2]
                if name.startswith(("loop", "ram", "zram")) or name[-1].isdigit() and not name.startswith("nvme"):
                    continue
                total += int(parts[5]) * 512
    except OSError:
        return 0
    return total


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def subset_dataset(folder: Path, out: Path, per_class: int) -> Path:
    """Convert ``per_class`` images of every class to 1 MB tar shards at ``out`` (cached)."""
    from shardprune.convert import convert

    if (out / "shardprune.json").exists():
        return out
    links = out.parent / (out.name + "-folder")
    if links.exists():
        shutil.rmtree(links)
    for cls in sorted(d for d in os.listdir(folder) if not d.startswith(".")):
        (links / cls).mkdir(parents=True)
        for name in sorted(os.listdir(folder / cls))[:per_class]:
            os.symlink(folder / cls / name, links / cls / name)
    convert("imagefolder", out, root=links, max_bytes=1 << 20, workers=1)
    return out


def machine() -> dict[str, Any]:
    from machineinfo import machine_info  # benchmarks/ is on sys.path when run as a script
    import torch
    import webdataset

    return machine_info(torch=torch.__version__, webdataset=getattr(webdataset, "__version__", "?"))


# -- driver ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tar", type=Path, default=BENCH / "io-tar", help="converted tar dataset (default .bench/io-tar)")
    p.add_argument("--imagefolder", type=Path, default=BENCH / "imagefolder", help="the source ImageFolder")
    p.add_argument("--storage", choices=("local", "s3"), default="local")
    p.add_argument("--mode", choices=("raw", "decode"), default="raw", help="yield bytes, or decode JPEGs (all readers)")
    p.add_argument("--ratios", default="0,0.3,0.5,0.7", help="prune ratios (default 0,0.3,0.5,0.7)")
    p.add_argument("--readers", default="shardprune,webdataset,imagefolder")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--io-concurrency", type=int, default=None, help="shardprune range reads in flight per worker")
    p.add_argument("--repeats", type=int, default=1, help="epochs per point; the median time is reported")
    p.add_argument("--loader-epochs", type=int, default=1,
                   help="shardprune: passes of one loader per run; the median after the first is reported (default 1)")
    p.add_argument("--s3-samples-per-class", type=int, default=40, help="S3 subset size per class (default 40)")
    p.add_argument("--drop-caches", action="store_true", help="drop the page cache before each local run (root)")
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    args = p.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    readers = args.readers.split(",")
    info = machine()
    print(f"# io_bench {' '.join(sys.argv[1:])}\n# machine: {json.dumps(info)}", flush=True)

    moto: subprocess.Popen[bytes] | None = None
    opts: dict[str, Any] | None = None
    root: Path = args.tar
    if args.storage == "s3":
        root = subset_dataset(args.imagefolder, BENCH / f"io-tar-s3sub{args.s3_samples_per_class}",
                              args.s3_samples_per_class)
        readers = [r for r in readers if r != "imagefolder"]
    if not (root / "shardprune.json").exists():
        print(f"no dataset at {root}; run tools/make_shards.py imagefolder {args.imagefolder} -o {root} --max-bytes 64M",
              file=sys.stderr)
        return 1
    local_ds = open_dataset(root)
    ds = local_ds
    urls = [str(root / s.path) for s in local_ds.header.shards]
    try:
        if args.storage == "s3":
            os.environ.update(CREDS)
            moto, endpoint = start_moto()
            opts = {"key": CREDS["AWS_ACCESS_KEY_ID"], "secret": CREDS["AWS_SECRET_ACCESS_KEY"],
                    "client_kwargs": {"endpoint_url": endpoint, "region_name": CREDS["AWS_DEFAULT_REGION"]}}
            import s3fs

            import boto3

            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
                         region_name=CREDS["AWS_DEFAULT_REGION"]).create_bucket(Bucket="bench")
            fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
            t0 = time.perf_counter()
            fs.put(str(root) + "/", "bench/ds/", recursive=True)
            print(f"# uploaded {root} to moto in {time.perf_counter() - t0:.1f} s", flush=True)
            ds = open_dataset("s3://bench/ds", opts)
            urls = [f"s3://bench/ds/{s.path}" for s in local_ds.header.shards]
        n = len(ds)
        lengths = np.asarray(ds.manifest.length, dtype=np.int64)
        folder = FolderDataset(args.imagefolder, args.mode) if "imagefolder" in readers else None
        if folder is not None and len(folder) != n:
            raise SystemExit(f"{args.imagefolder} has {len(folder)} files, the dataset {n} samples")
        # Warm-up: start the forkserver and import paths once, on a 1% epoch.
        warm = keep_mask(n, 0.99)
        run_shardprune(ds, warm, args)
        base: dict[str, float] = {}
        print(f"# {n} samples, {lengths.sum() / 2**20:.0f} MiB of samples, storage={args.storage}, mode={args.mode}, "
              f"workers={args.workers}, batch={args.batch_size}, drop_caches={args.drop_caches}")
        header = f"{'reader':<11} {'ratio':>5} {'samples':>7} {'sec':>7} {'samples/s':>9} {'read/kept':>9} " \
                 f"{'req/sample':>10} {'time/t0':>7} {'disk/kept':>9}"
        print(header, flush=True)
        for ratio in ratios:
            keep = keep_mask(n, ratio)
            kept_bytes = int(lengths[keep].sum())
            for reader in readers:
                runs = []
                for _ in range(args.repeats):
                    if args.drop_caches and args.storage == "local":
                        drop_caches()
                    disk0 = disk_read_bytes()
                    if reader == "shardprune":
                        r = run_shardprune(ds, keep, args)
                    elif reader == "webdataset":
                        r = run_webdataset(urls, keep, args, opts)
                    else:
                        assert folder is not None
                        r = run_imagefolder(folder, keep, args)
                    r["disk_bytes"] = disk_read_bytes() - disk0
                    runs.append(r)
                r = sorted(runs, key=lambda x: x["seconds"])[len(runs) // 2]
                if r["samples"] != int(keep.sum()):
                    raise SystemExit(f"{reader} yielded {r['samples']} samples, expected {int(keep.sum())}")
                if ratio == 0:
                    base[reader] = r["seconds"]
                row = {
                    "reader": reader, "ratio": ratio, "storage": args.storage, "mode": args.mode,
                    "samples": r["samples"], "seconds": round(r["seconds"], 3),
                    "samples_per_s": round(r["samples"] / r["seconds"], 1),
                    "bytes_read": r["bytes_read"], "bytes_kept": kept_bytes,
                    "read_over_kept": round(r["bytes_read"] / kept_bytes, 4),
                    "requests_per_sample": None if r["requests"] is None else round(r["requests"] / r["samples"], 4),
                    "time_over_unpruned": round(r["seconds"] / base[reader], 3) if reader in base else None,
                    "disk_over_kept": round(r["disk_bytes"] / kept_bytes, 4),
                    "all_seconds": [round(x["seconds"], 3) for x in runs],
                    "first_epoch_seconds": [round(x["first_epoch_s"], 3) for x in runs if "first_epoch_s" in x],
                }
                rps = "n/a" if row["requests_per_sample"] is None else f"{row['requests_per_sample']:.4f}"
                t0r = "n/a" if row["time_over_unpruned"] is None else f"{row['time_over_unpruned']:.3f}"
                print(f"{reader:<11} {ratio:>5.2f} {row['samples']:>7} {row['seconds']:>7.2f} "
                      f"{row['samples_per_s']:>9.1f} {row['read_over_kept']:>9.4f} {rps:>10} {t0r:>7} "
                      f"{row['disk_over_kept']:>9.3f}", flush=True)
                if args.out is not None:
                    with open(args.out, "a") as f:
                        f.write(json.dumps({**row, "machine": info, "workers": args.workers,
                                            "drop_caches": args.drop_caches}) + "\n")
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
