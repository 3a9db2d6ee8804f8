"""Peers side by side: one epoch of the same data through shardprune, webdataset, MosaicML
``streaming`` and ``litdata``, at prune ratios 0 and 0.5.

    python benchmarks/peers_bench.py                 # everything, one table
    python benchmarks/peers_bench.py --setup-peers   # first: a side venv with streaming + litdata
    python benchmarks/peers_bench.py --imagefolder .bench/imagefolder --classes 10 --root .bench/peers-jpg
    python benchmarks/peers_bench.py --readahead-probe   # page cache filled by a pruned cold read
    python benchmarks/peers_bench.py --help

Data: ``--num-samples`` CIFAR-sized samples (32x32x3 uint8, a fixed random pattern per
sample, label 0..9) converted once by shardprune to WebDataset-compatible tar shards
(``.npy`` members). webdataset reads those very tar files; MosaicML and litdata get a copy
of the same sample bytes (the ``.npy`` payload and the label) in their own formats (MDS;
litdata's chunked binary), written by their own writers, uncompressed. With
``--imagefolder``, the samples are the JPEG files of the first ``--classes`` class folders
instead, stored as they are; every reader decodes them with Pillow and center-crops to 224x224.

Pruning: shardprune's ``random`` policy keeps a uniform (1 - r) of the samples and plans the
epoch before reading, so a pruned sample's bytes are never fetched. Its measured epoch is
epoch 1 of 2, after one report per sample (a first epoch keeps every never-seen sample). The peers have no
per-sample pruning that avoids I/O; the best they offer is to filter after reading (here: a
deterministic 50% filter right after the raw read, before decoding, so they also skip the
decode). Every reader decodes the kept payloads (``numpy.load``, or Pillow for images) and
yields batches of ``--batch-size``; one process, no workers.

Measured per run, each in a fresh child process: samples yielded per second of the epoch,
bytes read (``rchar`` of ``/proc/self/io``: bytes through read syscalls, page cache
included; mmap'ed reads would not show and are flagged), and peak RSS (``ru_maxrss``) minus
the RSS after imports. Files are read once before the runs, so every reader sees a warm page
cache: the numbers compare the readers' own costs, not the disk. Then one cold run per
(reader, ratio): its files are evicted from the page cache first, and the bytes the run
brought back in are counted with ``mincore`` (every way of reading, readahead included).

MosaicML ``streaming`` 0.13 and ``litdata`` 0.2.76 both declare ``torchvision`` as a
dependency, which does not import beside this torch build, and ``streaming`` imports
``transformers`` (for batch types only). ``--setup-peers`` therefore installs them with
``--no-deps`` into ``.bench/peers-venv`` (seeing the project venv's packages through a
``.pth`` file, so torch 2.13.0 CPU is never replaced) plus their small runtime deps; the child
installs an import stub for ``torchvision``/``transformers`` (neither is used on these paths).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PEERS_VENV = REPO / ".bench" / "peers-venv"
READERS = ("shardprune", "webdataset", "mosaicml-streaming", "litdata")
#: The directory each reader reads, under ``--root``.
DATA_DIR = {"shardprune": "shardprune-tar", "webdataset": "shardprune-tar", "mosaicml-streaming": "mds", "litdata": "litdata"}
PEER_PACKAGES = ("mosaicml-streaming==0.13.0", "litdata==0.2.76")
PEER_RUNTIME_DEPS = (
    "xxhash", "zstd", "python-snappy", "cramjam", "Brotli", "catalogue", "lightning-utilities", "obstore", "tifffile",
)


# ----------------------------------------------------------------------------- helpers
def io_counters() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc() -> Any:
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def resident_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` now in the page cache (``mincore`` on a fresh mapping)."""
    import ctypes

    libc = _libc()
    total = 0
    for p in sorted(path.rglob("*")):
        size = p.stat().st_size if p.is_file() else 0
        if size == 0:
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr is None or addr == ctypes.c_void_p(-1).value:
                raise OSError(ctypes.get_errno(), f"mmap {p}")
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            rc = libc.mincore(addr, size, vec)
            libc.munmap(addr, size)
            if rc != 0:
                raise OSError(ctypes.get_errno(), f"mincore {p}")
        finally:
            os.close(fd)
        total += sum(b & 1 for b in bytes(vec)) * _PAGE
    return total


def evict(path: Path) -> None:
    """Drop the files under ``path`` from the page cache (clean pages; no root needed)."""
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                # Dirty pages (a freshly converted dataset) cannot be dropped: write them back first.
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def keep_fn(ratio: float) -> Callable[[int], bool]:
    """The peers' after-read filter: a deterministic hash of the sample index, keeping 1 - ratio."""
    if ratio <= 0:
        return lambda i: True
    cut = int((1.0 - ratio) * 2**32)
    return lambda i: (zlib.crc32(int(i).to_bytes(8, "little")) & 0xFFFFFFFF) < cut


def decode_npy(payload: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(payload), allow_pickle=False)


#: Images are center-cropped to this square after decoding, so batches stack (``--imagefolder``).
CROP = 224
IMAGE_FIELDS = ("jpg", "jpeg", "png")


def center_crop(chw: np.ndarray) -> np.ndarray:
    """The central ``CROP x CROP`` of a CHW image (every image of the benchmark set is larger)."""
    _, h, w = chw.shape
    top, left = max((h - CROP) // 2, 0), max((w - CROP) // 2, 0)
    return np.ascontiguousarray(chw[:, top : top + CROP, left : left + CROP])


def decode_payload(field: str, payload: bytes) -> np.ndarray:
    """What every reader does with a kept sample: ``numpy.load`` an ``.npy``, or decode an image
    with Pillow to CHW uint8 and center-crop it."""
    if field == "npy":
        return decode_npy(payload)
    import io

    from PIL import Image

    with Image.open(io.BytesIO(payload)) as img:
        arr = np.asarray(img.convert("RGB"))
    return center_crop(arr.transpose(2, 0, 1))


class CropField:
    """shardprune loader transform: center-crop the decoded image field (a class, so it pickles)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample[self.field] = center_crop(sample[self.field])
        return sample


def payload_field(tar_dir: Path) -> str:
    """The dataset's payload field: ``npy`` (synthetic arrays) or the image field (``--imagefolder``)."""
    sys.path.insert(0, str(REPO))
    from shardprune.dataset import ShardedDataset

    fields = ShardedDataset(str(tar_dir)).header.fields
    for name in ("npy", *IMAGE_FIELDS):
        if name in fields:
            return name
    raise SystemExit(f"{tar_dir}: no npy or image field among {sorted(fields)}")


def stub_unusable_imports() -> None:
    """Satisfy ``import torchvision`` / ``import transformers`` inside the peers with empty modules."""
    import importlib.abc
    import importlib.machinery
    import types

    class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        roots = ("torchvision", "transformers")

        def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
            if name.split(".")[0] in self.roots:
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec: Any) -> Any:
            module = types.ModuleType(spec.name)
            module.__path__ = []

            def attr(name: str) -> Any:
                if name.startswith("__"):
                    raise AttributeError(name)
                return type(name, (dict,), {})

            module.__getattr__ = attr  # type: ignore[method-assign]
            return module

        def exec_module(self, module: Any) -> None:
            return None

    sys.meta_path.insert(0, _Stub())


def batches(samples: Iterator[tuple[np.ndarray, int]], batch_size: int) -> Iterator[tuple[Any, Any]]:
    import torch

    xs: list[np.ndarray] = []
    ys: list[int] = []
    for x, y in samples:
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            yield torch.from_numpy(np.stack(xs)), torch.tensor(ys)
            xs, ys = [], []
    if xs:
        yield torch.from_numpy(np.stack(xs)), torch.tensor(ys)


# ----------------------------------------------------------------------------- data
def build_data(root: Path, num_samples: int, shard_bytes: int) -> Path:
    """Convert the synthetic samples to shardprune tar shards (reused when present)."""
    sys.path.insert(0, str(REPO))
    from shardprune.convert import convert

    tar_dir = root / "shardprune-tar"
    if (tar_dir / "shardprune.json").exists():
        return tar_dir
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(num_samples, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=num_samples)
    root.mkdir(parents=True, exist_ok=True)
    npz = root / "source.npz"
    np.savez(npz, x=x, y=y)
    convert("arrays", tar_dir, path=str(npz), shard_format="tar", max_bytes=shard_bytes, num_classes=10)
    npz.unlink()
    return tar_dir


def build_imagefolder(root: Path, source: Path, classes: int, shard_bytes: int) -> Path:
    """Convert the first ``classes`` class folders of an ImageFolder to tar shards, bytes as they are."""
    sys.path.insert(0, str(REPO))
    from shardprune.convert import convert

    tar_dir = root / "shardprune-tar"
    if (tar_dir / "shardprune.json").exists():
        return tar_dir
    subset = root / "source"
    subset.mkdir(parents=True, exist_ok=True)
    folders = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))[:classes]
    for folder in folders:
        link = subset / folder.name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
    convert("imagefolder", tar_dir, root=str(subset), shard_format="tar", max_bytes=shard_bytes)
    return tar_dir


def tar_samples(tar_dir: Path) -> Iterator[tuple[int, bytes, int]]:
    """(id, payload, label) of every sample, from the shardprune dataset (raw bytes, CRC-checked)."""
    sys.path.insert(0, str(REPO))
    from shardprune.dataset import ShardedDataset

    field = payload_field(tar_dir)
    ds = ShardedDataset(str(tar_dir))
    for i in range(len(ds)):
        s = ds.read_sample(i)
        yield i, bytes(s[field]), int(s["label"])


def build_mds(tar_dir: Path, out: Path, shard_bytes: int) -> None:
    stub_unusable_imports()
    from streaming import MDSWriter

    field = payload_field(tar_dir)
    with MDSWriter(out=str(out), columns={"id": "int", field: "bytes", "label": "int"}, size_limit=shard_bytes) as w:
        for i, payload, label in tar_samples(tar_dir):
            w.write({"id": i, field: payload, "label": label})


def build_litdata(tar_dir: Path, out: Path, shard_bytes: int) -> None:
    stub_unusable_imports()
    from litdata.streaming.writer import BinaryWriter

    w = BinaryWriter(str(out), chunk_bytes=shard_bytes)
    field = payload_field(tar_dir)
    for i, payload, label in tar_samples(tar_dir):
        w[i] = {"id": i, field: payload, "label": label}
    w.done()
    w.merge()


# ----------------------------------------------------------------------------- readers
def read_shardprune(root: Path, ratio: float, batch_size: int) -> Iterator[tuple[Any, Any]]:
    sys.path.insert(0, str(REPO))
    import tempfile

    from shardprune.dataset import ShardedDataset
    from shardprune.loader import StreamingLoader
    from shardprune.policies import make_policy
    from shardprune.scores import ScoreStore

    ds = ShardedDataset(str(root / "shardprune-tar"))
    field = payload_field(root / "shardprune-tar")
    policy = make_policy("full") if ratio <= 0 else make_policy("random", prune_ratio=ratio)
    with tempfile.TemporaryDirectory() as tmp:
        store = ScoreStore(os.path.join(tmp, "scores"), num_samples=len(ds), dataset_fingerprint=ds.fingerprint)
        # Measure the epoch after a scored one: every policy keeps samples it has never seen,
        # so a first epoch reads everything whatever r is. One report per sample marks all seen
        # (random pruning ignores the loss values).
        n = len(ds)
        store.apply(np.arange(n, dtype=np.int64), np.ones(n, dtype=np.float32), epoch=0)
        loader = StreamingLoader(
            ds,
            batch_size=batch_size,
            policy=policy,
            store=store,
            num_epochs=2,
            seed=0,
            drop_last=False,
            transform=None if field == "npy" else CropField(field),
        )
        loader.set_epoch(1)
        for batch in loader:
            yield batch[field], batch["label"]
        stats = loader.epoch_stats
        READER_EXTRA["loader_stats"] = stats if isinstance(stats, dict) else getattr(stats, "__dict__", str(stats))
        store.close()


def read_webdataset(root: Path, ratio: float, batch_size: int) -> Iterator[tuple[Any, Any]]:
    import webdataset as wds

    sys.path.insert(0, str(REPO))
    from shardprune.dataset import ShardedDataset

    ds = ShardedDataset(str(root / "shardprune-tar"))
    urls = [str(root / "shardprune-tar" / s.path) for s in ds.header.shards]
    keep = keep_fn(ratio)
    labels = ds.labels
    field = payload_field(root / "shardprune-tar")
    # Sample keys are the shardprune ids, so the same filter applies; labels come from the manifest.
    pipe = wds.WebDataset(urls, shardshuffle=False, empty_check=False).select(lambda s: keep(key_id(s["__key__"])))

    def samples() -> Iterator[tuple[np.ndarray, int]]:
        for s in pipe:
            i = key_id(s["__key__"])
            yield decode_payload(field, s[field]), int(labels[i])

    yield from batches(samples(), batch_size)


def key_id(key: str) -> int:
    digits = "".join(ch for ch in key.rsplit("/", 1)[-1] if ch.isdigit())
    return int(digits) if digits else zlib.crc32(key.encode())


def _filtered_batches(ds: Iterable[Any], root: Path, ratio: float, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """Batches of a peer's samples (dicts with ``id``, ``label`` and the payload field), filtered after reading."""
    keep = keep_fn(ratio)
    field = payload_field(root / "shardprune-tar")

    def samples() -> Iterator[tuple[np.ndarray, int]]:
        for s in ds:
            if keep(int(s["id"])):
                yield decode_payload(field, s[field]), int(s["label"])

    yield from batches(samples(), batch_size)


def read_mosaic(root: Path, ratio: float, batch_size: int) -> Iterator[tuple[Any, Any]]:
    stub_unusable_imports()
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(root / "mds"), shuffle=False, batch_size=batch_size)
    yield from _filtered_batches(ds, root, ratio, batch_size)


def read_litdata(root: Path, ratio: float, batch_size: int) -> Iterator[tuple[Any, Any]]:
    stub_unusable_imports()
    from litdata import StreamingDataset

    yield from _filtered_batches(StreamingDataset(str(root / "litdata"), shuffle=False), root, ratio, batch_size)


READER_FNS: dict[str, Callable[[Path, float, int], Iterator[tuple[Any, Any]]]] = {
    "shardprune": read_shardprune,
    "webdataset": read_webdataset,
    "mosaicml-streaming": read_mosaic,
    "litdata": read_litdata,
}
READER_EXTRA: dict[str, Any] = {}


def warm_score_store() -> None:
    """Open and close a throw-away score store: zarr imports its codecs and scans package
    entry points on first use, which would otherwise count as the reader's bytes."""
    import tempfile

    import zarr  # noqa: F401

    from shardprune.scores import ScoreStore

    with tempfile.TemporaryDirectory() as tmp:
        store = ScoreStore(os.path.join(tmp, "warm"), num_samples=1, dataset_fingerprint="warm")
        store.apply(np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.float32), epoch=0)
        store.snapshot()
        store.close()


def child(reader: str, ratio: float, root: Path, batch_size: int) -> dict[str, Any]:
    """One measured epoch in this (fresh) process."""
    import torch  # noqa: F401 - imported before the baseline so every reader pays it equally

    # Import each reader's modules before the baseline: reading their .py/.pyc files would
    # otherwise count as bytes read by the reader.
    if reader in ("mosaicml-streaming", "litdata"):
        stub_unusable_imports()
        import litdata  # noqa: F401
        import litdata.streaming.dataset  # noqa: F401
        import streaming  # noqa: F401
        import streaming.base.dataset  # noqa: F401
    else:
        sys.path.insert(0, str(REPO))
        import shardprune.dataset  # noqa: F401
        import shardprune.loader  # noqa: F401
        import shardprune.policies  # noqa: F401
        import shardprune.scores  # noqa: F401
        import webdataset  # noqa: F401

        if reader == "shardprune":
            warm_score_store()
    rss0 = rss_now_bytes()
    io0 = io_counters()
    t0 = time.perf_counter()
    n = 0
    checksum = 0
    for x, y in READER_FNS[reader](root, ratio, batch_size):
        n += int(y.shape[0])
        checksum += int(y.sum())
    wall = time.perf_counter() - t0
    io1 = io_counters()
    return {
        "reader": reader,
        "prune_ratio": ratio,
        "samples": n,
        "label_sum": checksum,
        "wall_s": wall,
        "samples_per_s": n / wall if wall > 0 else float("nan"),
        "rchar": io1["rchar"] - io0["rchar"],
        "read_bytes": io1["read_bytes"] - io0["read_bytes"],
        "syscr": io1["syscr"] - io0["syscr"],
        "peak_rss": rss_peak_bytes(),
        "rss_after_imports": rss0,
        "extra": {k: (v if isinstance(v, (int, float, str, dict, list)) else str(v)) for k, v in READER_EXTRA.items()},
    }


# ----------------------------------------------------------------------------- readahead probe
def readahead_probe(tar_dir: Path, ratio: float) -> str:
    """What a local disk really reads when half the samples are skipped: ``pread`` the kept
    samples' byte ranges from cold shard files, with the kernel's default readahead and with
    ``POSIX_FADV_RANDOM`` (readahead off), and count the bytes brought into the page cache."""
    sys.path.insert(0, str(REPO))
    from shardprune.dataset import ShardedDataset

    ds = ShardedDataset(str(tar_dir))
    m = ds.manifest
    keep = keep_fn(ratio)
    kept = np.array([keep(i) for i in range(len(ds))], dtype=bool)
    requested = int(m.length[kept].sum())
    lines = [
        f"readahead probe: {int(kept.sum())} of {len(ds)} samples kept (r={ratio:g}), {mib(requested)} MiB requested "
        f"of {mib(int(m.length.sum()))} MiB",
        "| readahead | MiB brought into page cache | x requested | s |",
        "|---|---|---|---|",
    ]
    for mode in ("kernel default", "POSIX_FADV_RANDOM"):
        evict(tar_dir)
        before = resident_bytes(tar_dir)
        t0 = time.perf_counter()
        for shard in range(len(ds.header.shards)):
            rows = np.flatnonzero(kept & (m.shard == shard))
            fd = os.open(tar_dir / ds.shard_path(shard), os.O_RDONLY)
            try:
                if mode == "POSIX_FADV_RANDOM":
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                for i in rows[np.argsort(m.offset[rows])]:
                    os.pread(fd, int(m.length[i]), int(m.offset[i]))
            finally:
                os.close(fd)
        wall = time.perf_counter() - t0
        brought = resident_bytes(tar_dir) - before
        lines.append(f"| {mode} | {mib(brought)} | {brought / requested:.2f} | {wall:.2f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver
def peers_python() -> str | None:
    py = PEERS_VENV / "bin" / "python"
    return str(py) if py.exists() else None


def setup_peers() -> None:
    """Create .bench/peers-venv seeing the project venv's packages, then add the peers with --no-deps."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    py = str(PEERS_VENV / "bin" / "python")
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"] or site.getsitepackages()[0]
    Path(purelib, "shared-venv.pth").write_text(here + "\n")
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", *PEER_PACKAGES, *PEER_RUNTIME_DEPS],
        check=True,
    )


def run_child(py: str, reader: str, ratio: float, root: Path, batch_size: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [py, __file__, "--child", reader, "--ratio", str(ratio), "--root", str(root), "--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"reader": reader, "prune_ratio": ratio, "error": tail[0]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def warm(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 22):
                    pass


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def summarize(runs: list[dict[str, Any]], readers: list[str], ratios: list[float]) -> str:
    header = (
        "| reader | r | samples | samples/s warm (median, min-max) | read syscall MiB (rchar) | samples/s cold | "
        "MiB brought into page cache, cold | peak RSS MiB | RSS growth MiB |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for reader in readers:
        for ratio in ratios:
            rs = [r for r in runs if r["reader"] == reader and r["prune_ratio"] == ratio and not r.get("cold")]
            cold = [r for r in runs if r["reader"] == reader and r["prune_ratio"] == ratio and r.get("cold")]
            errors = [r["error"] for r in rs + cold if "error" in r]
            ok = [r for r in rs if "error" not in r]
            cold_ok = [r for r in cold if "error" not in r]
            if not ok:
                lines.append(f"| {reader} | {ratio:g} | - | not run: {errors[0] if errors else 'skipped'} | | | | | |")
                continue
            sps = float(np.median([r["samples_per_s"] for r in ok]))
            spread = (min(r["samples_per_s"] for r in ok), max(r["samples_per_s"] for r in ok))
            cold_sps = f"{cold_ok[0]['samples_per_s']:,.0f}" if cold_ok else "-"
            cold_in = mib(cold_ok[0]["cache_bytes_in"]) if cold_ok else "-"
            lines.append(
                f"| {reader} | {ratio:g} | {ok[0]['samples']} | {sps:,.0f} ({spread[0]:,.0f}-{spread[1]:,.0f}) | "
                f"{mib(np.median([r['rchar'] for r in ok]))} | {cold_sps} | {cold_in} | "
                f"{mib(max(r['peak_rss'] for r in ok))} | "
                f"{mib(max(r['peak_rss'] - r['rss_after_imports'] for r in ok))} |"
            )
    return "\n".join(lines)


def machine() -> str:
    from machineinfo import machine_line  # benchmarks/ is on sys.path when run as a script

    return machine_line()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO / ".bench" / "peers", help="data directory (default %(default)s)")
    ap.add_argument("--num-samples", type=int, default=20000, help="samples (32x32x3 uint8) (default %(default)s)")
    ap.add_argument(
        "--imagefolder",
        type=Path,
        default=None,
        help="use JPEGs from this ImageFolder instead of synthetic arrays (decoded with Pillow, center-cropped "
        f"to {CROP}x{CROP}); use a --root of its own",
    )
    ap.add_argument("--classes", type=int, default=10, help="with --imagefolder: the first N class folders (default 10)")
    ap.add_argument("--shard-bytes", type=int, default=8 << 20, help="shard size for every format (default 8 MiB)")
    ap.add_argument("--batch-size", type=int, default=256, help="batch size (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per (reader, ratio) (default %(default)s)")
    ap.add_argument("--readers", default=",".join(READERS), help="comma-separated (default all)")
    ap.add_argument("--ratios", default="0,0.5", help="prune ratios (default %(default)s)")
    ap.add_argument("--json", type=Path, default=None, help="also write every run as JSON here")
    ap.add_argument("--setup-peers", action="store_true", help="create .bench/peers-venv with streaming and litdata")
    ap.add_argument(
        "--readahead-probe",
        action="store_true",
        help="only measure the page cache filled by reading the kept samples cold, with and without readahead",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.ratio, args.root, args.batch_size)))
        return 0
    if args.setup_peers:
        setup_peers()
        return 0
    readers = [r for r in args.readers.split(",") if r]
    ratios = [float(r) for r in args.ratios.split(",")]
    print(f"machine: {machine()}", flush=True)
    if args.imagefolder is not None:
        tar_dir = build_imagefolder(args.root, args.imagefolder, args.classes, args.shard_bytes)
    else:
        tar_dir = build_data(args.root, args.num_samples, args.shard_bytes)
    if args.readahead_probe:
        print(readahead_probe(tar_dir, max(ratios)))
        return 0
    py_peers = peers_python()
    notes: list[str] = []
    if py_peers is None:
        notes.append(f"{PEERS_VENV} missing: run with --setup-peers first; MosaicML and litdata are skipped")
    else:
        for name, fn, sub in (("mosaicml-streaming", "build_mds", "mds"), ("litdata", "build_litdata", "litdata")):
            if name in readers and not (args.root / sub).exists():
                code = (
                    f"import sys; sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'benchmarks')!r}); "
                    f"import peers_bench as b; from pathlib import Path; "
                    f"b.{fn}(Path({str(tar_dir)!r}), Path({str(args.root / sub)!r}), {args.shard_bytes})"
                )
                proc = subprocess.run([py_peers, "-c", code], capture_output=True, text=True)
                if proc.returncode != 0:
                    notes.append(f"{name}: conversion failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    for sub in ("shardprune-tar", "mds", "litdata"):
        if (args.root / sub).exists():
            warm(args.root / sub)
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for reader in readers:
            py = py_peers if reader in ("mosaicml-streaming", "litdata") else (py_peers or sys.executable)
            for ratio in ratios:
                if py is None:
                    runs.append({"reader": reader, "prune_ratio": ratio, "error": "peers venv missing (--setup-peers)"})
                    continue
                r = run_child(py, reader, ratio, args.root, args.batch_size)
                r["repeat"] = rep
                runs.append(r)
                msg = r.get("error") or f"{r['samples']} samples, {r['samples_per_s']:,.0f}/s, rchar {mib(r['rchar'])} MiB"
                print(f"  [{rep + 1}/{args.repeats}] {reader:<18} r={ratio:g}: {msg}", flush=True)
    # One cold run per (reader, ratio): the reader's files are evicted from the page cache
    # first, and afterwards the bytes it brought back in are counted with mincore. This
    # sees every way of reading (read syscalls, mmap page faults) plus kernel readahead.
    for reader in readers:
        py = py_peers if reader in ("mosaicml-streaming", "litdata") else (py_peers or sys.executable)
        data_dir = args.root / DATA_DIR[reader]
        if py is None or not data_dir.exists():
            continue
        for ratio in ratios:
            evict(data_dir)
            before = resident_bytes(data_dir)
            r = run_child(py, reader, ratio, args.root, args.batch_size)
            r["cold"] = True
            r["cache_before"] = before
            r["cache_bytes_in"] = resident_bytes(data_dir) - before
            runs.append(r)
            msg = r.get("error") or (
                f"{r['samples_per_s']:,.0f}/s, brought into page cache {mib(r['cache_bytes_in'])} MiB "
                f"(resident before: {mib(before)} MiB)"
            )
            print(f"  [cold] {reader:<18} r={ratio:g}: {msg}", flush=True)
    sizes = {
        sub: sum(p.stat().st_size for p in (args.root / sub).rglob("*") if p.is_file())
        for sub in ("shardprune-tar", "mds", "litdata")
        if (args.root / sub).exists()
    }
    print()
    sys.path.insert(0, str(REPO))
    from shardprune.dataset import ShardedDataset

    ds = ShardedDataset(str(tar_dir))
    what = (
        "32x32x3 uint8 arrays" if payload_field(tar_dir) == "npy"
        else f"images from {args.imagefolder}, decoded and center-cropped to {CROP}x{CROP}"
    )
    print(
        f"{len(ds)} samples of {what} (payload mean {float(np.mean(ds.manifest.length)):,.0f} B in the tar); "
        "dataset bytes on disk: " + ", ".join(f"{k} {mib(v)} MiB" for k, v in sizes.items())
    )
    print(summarize(runs, readers, ratios))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "sizes": sizes, "runs": runs, "notes": notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
