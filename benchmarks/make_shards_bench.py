"""Conversion speed of ``tools/make_shards.py`` against ``webdataset.ShardWriter``, and the
load time of a large manifest.

    python benchmarks/make_shards_bench.py generate   # the ImageFolder (once, cached)
    python benchmarks/make_shards_bench.py convert    # shardprune vs ShardWriter, same input
    python benchmarks/make_shards_bench.py manifest   # load 1.3M manifest rows, median of 5
    python benchmarks/make_shards_bench.py all

Input: an ImageNet-like ImageFolder of ``--num-images`` JPEGs (default 20,000; 100 classes;
smooth-noise pictures 300-500 px a side, quality 90, about 50-200 KB each) generated with a
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
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["generate", "convert", "manifest", "all"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="ImageFolder location")
    parser.add_argument("--num-images", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.step in ("generate", "all"):
        generate(args.root, args.num_images, args.processes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
