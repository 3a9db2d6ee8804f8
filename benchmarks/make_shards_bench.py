"""Conversion speed of ``tools/make_shards.py`` against ``webdataset.ShardWriter``, and the
load time of a large manifest.

    python benchmarks/make_shards_bench.py generate   # the ImageFolder (once, cached)
    python benchmarks/make_shards_bench.py convert    # shardprune vs ShardWriter, same input
    python benchmarks/make_shards_bench.py manifest   # load 1.3M manifest rows, median of 5
    python benchmarks/make_shards_bench.py all --runs 5

On a shared machine, run it under ``flock /tmp/sp_bench.lock``. Results and their analysis:
``benchmarks/RESULTS.md``.

convert: ``tools/make_shards.py imagefolder`` (in process, ``--workers 1`` and ``2``) and
``webdataset.ShardWriter`` (single process; with and without an fsync of each shard) write
the same files into shards of the same size on the same disk, ``--runs`` times each,
interleaved; the input is read once first so every run finds it in the page cache. Zarr
shards do not apply: they hold fixed-shape arrays, not encoded JPEG bytes.

Input: an ImageNet-like ImageFolder of ``--num-images`` JPEGs (default 20,000; 100 classes;
smooth-noise pictures 300-500 px a side, quality 90, 43-118 KB each, 76 KB mean) generated with a
process pool under ``.bench/imagefolder`` (git-ignored). A ``.complete`` marker is written
last, so a reader (this script, or another benchmark that reuses the folder) can tell a
finished folder from an interrupted one.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / ".bench" / "imagefolder"
COMPLETE = ".complete"
NUM_CLASSES = 100


def _class_name(label: int) -> str:
    return f"n{label:08d}"


def _image_path(root: Path, index: int) -> Path:
    label = index % NUM_CLASSES
    return root / _class_name(label) / f"img_{index:07d}.jpg"


def _make_jpeg(index: int) -> bytes:
    """One smooth-noise picture: a coarse random grid upsampled bicubically, plus fine noise.

    Seeded by ``index`` alone, so the folder is the same on every machine and every run.
    """
    from PIL import Image

    rng = np.random.default_rng([20_000, index])
    width, height = (int(v) for v in rng.integers(300, 501, size=2))
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noisy = smooth.astype(np.int16) + rng.integers(-16, 17, size=smooth.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_one(args: tuple[str, int]) -> int:
    root, index = args
    path = _image_path(Path(root), index)
    if path.exists():
        return path.stat().st_size
    data = _make_jpeg(index)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def generate(root: Path, num_images: int, processes: int) -> None:
    """Write the ImageFolder under ``root`` unless a complete one with enough images is there."""
    marker = root / COMPLETE
    if marker.exists() and int(marker.read_text().split()[0]) >= num_images:
        print(f"{root}: complete ({marker.read_text().strip()}), reusing it")
        return
    for label in range(NUM_CLASSES):
        (root / _class_name(label)).mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    total = 0
    jobs = [(str(root), i) for i in range(num_images)]
    with multiprocessing.Pool(processes) as pool:
        for size in tqdm(pool.imap_unordered(_write_one, jobs, chunksize=64), total=num_images,
                         unit="img", desc="generate"):
            total += size
    marker.write_text(f"{num_images} images {total} bytes\n")
    print(f"{root}: {num_images} JPEGs, {total / 1e6:.1f} MB")


def machine() -> str:
    """One line naming the machine: cores, CPU model, RAM, load, Python and webdataset versions."""
    from machineinfo import machine_line  # benchmarks/ is on sys.path when run as a script
    import webdataset

    return machine_line(webdataset=getattr(webdataset, "__version__", "?"))


def _listing(root: Path) -> tuple[list[str], list[int]]:
    """The ImageFolder's files and labels in the order ``ImageFolderSource`` uses (sorted)."""
    paths: list[str] = []
    labels: list[int] = []
    classes = sorted(e for e in os.listdir(root) if not e.startswith(".") and (root / e).is_dir())
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(root / name) if not f.startswith("."))
        paths.extend(str(root / name / f) for f in files)
        labels.extend([label] * len(files))
    return paths, labels


def run_shardprune(root: Path, out: Path, max_bytes: int, workers: int) -> int:
    """tools/make_shards.py imagefolder, in process (listing, shards, manifest, header, fsync)."""
    from shardprune.format.writer import DatasetWriter
    from shardprune.sources.imagefolder import ImageFolderSource

    header = DatasetWriter(out, max_bytes=max_bytes, workers=workers).write(ImageFolderSource(root))
    return len(header.shards)


def run_shardwriter(root: Path, out: Path, max_bytes: int, fsync: bool) -> int:
    """``webdataset.ShardWriter`` on the same files: list, read each file, write ``jpg`` + ``cls``.

    ShardWriter neither fsyncs nor writes an index; with ``fsync`` each finished shard is
    fsynced afterwards, which is what our writer does before publishing a shard.
    """
    import webdataset as wds

    paths, labels = _listing(root)
    out.mkdir(parents=True)
    pattern = str(out / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=10**9, maxsize=max_bytes, verbose=0) as sink:
        for i, (path, label) in enumerate(zip(paths, labels)):
            with open(path, "rb") as f:
                data = f.read()
            sink.write({"__key__": f"{i:010d}", "jpg": data, "cls": label})
        shards = sink.shard
    if fsync:
        for tar in sorted(out.glob("*.tar")):
            fd = os.open(tar, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return int(shards)


def convert_bench(root: Path, work: Path, runs: int, max_bytes: int) -> list[str]:
    """Time every writer ``runs`` times, interleaved, on the same input; return RESULTS lines."""
    import shutil
    import statistics
    import time

    marker = root / COMPLETE
    if not marker.exists():
        raise SystemExit(f"{root} has no {COMPLETE} marker; run the generate step first (or wait for it)")
    paths, _ = _listing(root)
    in_bytes = sum(os.path.getsize(p) for p in paths)
    n = len(paths)
    # One untimed pass so every writer reads the input from the page cache.
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    writers: dict[str, Any] = {
        "shardprune --workers 1": lambda out: run_shardprune(root, out, max_bytes, 1),
        "shardprune --workers 2": lambda out: run_shardprune(root, out, max_bytes, 2),
        "webdataset.ShardWriter (no fsync)": lambda out: run_shardwriter(root, out, max_bytes, False),
        "webdataset.ShardWriter + fsync": lambda out: run_shardwriter(root, out, max_bytes, True),
    }
    times: dict[str, list[float]] = {name: [] for name in writers}
    shards: dict[str, int] = {}
    work.mkdir(parents=True, exist_ok=True)
    for r in range(runs):
        for name, fn in writers.items():
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # start each run without the previous run's dirty pages
            t0 = time.perf_counter()
            shards[name] = fn(out)
            seconds = time.perf_counter() - t0
            times[name].append(seconds)
            print(f"run {r + 1}/{runs} {name}: {seconds:.2f} s", flush=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    lines = [
        f"input: {n} JPEGs, {in_bytes / 1e6:.1f} MB ({in_bytes / n / 1e3:.0f} KB mean), page-cached; "
        f"shards up to {max_bytes / 2**20:.0f} MiB; output under {work}; median of {runs} runs",
        "| writer | shards | median s | samples/s | MB/s | runs (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(
            f"| {name} | {shards[name]} | {med:.2f} | {n / med:,.0f} | {in_bytes / 1e6 / med:,.0f} | "
            + ", ".join(f"{t:.2f}" for t in ts)
            + " |"
        )
    return lines


def manifest_bench(work: Path, num_rows: int, runs: int) -> list[str]:
    """Write a ``num_rows`` manifest (and header) with our writer code; time loading it."""
    import statistics
    import time

    from shardprune.dataset import ShardedDataset
    from shardprune.format.header import HEADER_NAME, MANIFEST_NAME, Header, ShardInfo
    from shardprune.format.manifest import Manifest, sha256
    from shardprune.storage import Storage

    rng = np.random.default_rng(7)
    per_shard = 1000
    length = rng.integers(50_000, 200_001, num_rows).astype(np.int64)
    shard = (np.arange(num_rows) // per_shard).astype(np.int32)
    offset = np.empty(num_rows, dtype=np.int64)
    for s in range(0, num_rows, per_shard):
        chunk = length[s : s + per_shard]
        offset[s : s + per_shard] = np.concatenate([[0], np.cumsum(chunk[:-1])])
    manifest = Manifest.from_columns(
        shard=shard,
        offset=offset,
        length=length,
        label=rng.integers(0, 1000, num_rows),
        crc32=rng.integers(0, 2**32, num_rows, dtype=np.uint64).astype(np.uint32),
    )
    t0 = time.perf_counter()
    data = manifest.to_bytes()
    write_s = time.perf_counter() - t0
    num_shards = int(shard[-1]) + 1
    infos = []
    for s in range(num_shards):
        sl = slice(s * per_shard, (s + 1) * per_shard)
        infos.append(ShardInfo(f"shards/{s:06d}.tar", int(length[sl].sum()), int(length[sl].size)))
    header = Header(num_rows, "tar", {"jpg": {"encoding": "jpeg"}, "cls": {"encoding": "int"}}, tuple(infos),
                    sha256(data), num_classes=1000)
    root = work / "manifest-bench"
    st = Storage(root)
    st.write_bytes_atomic(MANIFEST_NAME, data)
    st.write_bytes_atomic(HEADER_NAME, header.to_json().encode())
    path = root / MANIFEST_NAME
    parse: list[float] = []
    open_ds: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        loaded = Manifest.from_bytes(path.read_bytes(), str(path))
        parse.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ds = ShardedDataset(root)
        open_ds.append(time.perf_counter() - t0)
    assert len(loaded) == num_rows and np.array_equal(loaded.offset, offset) and len(ds) == num_rows
    return [
        f"{num_rows:,} rows, {num_shards} shards: manifest.arrow {len(data) / 1e6:.1f} MB "
        f"(written in {write_s:.2f} s), header {os.path.getsize(root / HEADER_NAME) / 1e3:.0f} KB",
        f"read + parse manifest (Manifest.from_bytes): median {statistics.median(parse) * 1e3:.1f} ms of {runs} "
        f"({', '.join(f'{t * 1e3:.1f}' for t in parse)} ms)",
        f"open_dataset (header + manifest + sha256 check + parse): median "
        f"{statistics.median(open_ds) * 1e3:.1f} ms of {runs} ({', '.join(f'{t * 1e3:.1f}' for t in open_ds)} ms)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run under flock /tmp/sp_bench.lock on a shared machine.",
    )
    parser.add_argument("step", choices=["generate", "convert", "manifest", "all"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="ImageFolder location")
    parser.add_argument("--num-images", type=int, default=20_000, help="images to generate (default 20000)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="generate: pool size")
    parser.add_argument("--work", type=Path, default=REPO / ".bench" / "work",
                        help="where outputs are written (same disk as --root by default)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per writer (default 3, median reported)")
    parser.add_argument("--max-bytes", type=int, default=256 * 2**20, help="shard size limit (default 256 MiB)")
    parser.add_argument("--manifest-rows", type=int, default=1_300_000, help="manifest rows (default 1.3M)")
    parser.add_argument("--manifest-runs", type=int, default=5, help="timed loads (default 5, median reported)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.manifest_runs < 1:
        parser.error("--runs and --manifest-runs must be >= 1")
    print("machine:", machine(), flush=True)
    if args.step in ("generate", "all"):
        generate(args.root, args.num_images, args.processes)
    if args.step in ("convert", "all"):
        for line in convert_bench(args.root, args.work, args.runs, args.max_bytes):
            print(line)
    if args.step in ("manifest", "all"):
        for line in manifest_bench(args.work, args.manifest_rows, args.manifest_runs):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
