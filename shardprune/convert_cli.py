"""Convert data to shardprune datasets, or index existing WebDataset tars in place.

The command line behind ``shardprune convert`` (the console script a pip install gives)
and ``tools/make_shards.py`` (the same code, for a source checkout). Examples::

    shardprune convert imagefolder /data/imagenet/train -o /data/in1k-train --path-column path
    shardprune convert parquet table.parquet -o out/pq --metadata-columns width,height
    python tools/make_shards.py imagefolder /data/imagenet/train -o /data/in1k-train --workers 2
    python tools/make_shards.py arrays data.npz -o out/arrays --format zarr --compression zstd
    python tools/make_shards.py cifar cifar-10-batches-py -o out/cifar10-train --split train
    python tools/make_shards.py parquet table.parquet -o out/pq --image-column image --label-column label
    python tools/make_shards.py mnist1d -o out/mnist1d-train --num-samples 10000 --split train
    python tools/make_shards.py digits -o out/digits-test --split test --format zarr
    python tools/make_shards.py index /data/webdataset-shards

Errors print one line and exit 1; re-running an interrupted command finishes the job.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any, Callable, NoReturn

from shardprune.convert import make_source
from shardprune.errors import ShardpruneError
from shardprune.format.header import Header
from shardprune.format.metadata import JsonColumns
from shardprune.format.tarindex import index_tars
from shardprune.format.writer import DEFAULT_MAX_BYTES, DatasetWriter

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def byte_size(text: str) -> int:
    """Parse ``256M``, ``1.5G``, ``4096`` (binary units) into bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 4096, 64M or 1G")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (the reason, then where to look)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _add_writer_options(p: argparse.ArgumentParser, *, arrays: bool) -> None:
    p.add_argument("-o", "--output", required=True, help="output directory (or s3://bucket/prefix)")
    p.add_argument(
        "--format",
        dest="shard_format",
        choices=("tar", "zarr") if arrays else ("tar",),
        default="tar",
        help="shard format (default tar)" + ("" if arrays else "; zarr needs fixed-shape arrays"),
    )
    p.add_argument(
        "--max-bytes",
        type=byte_size,
        default=DEFAULT_MAX_BYTES,
        help=f"roll to a new shard before this size (default {DEFAULT_MAX_BYTES // 2**20}M; 0: no limit)",
    )
    p.add_argument("--max-samples", type=int, default=None, help="roll to a new shard after this many samples")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    if arrays:
        p.add_argument(
            "--compression", choices=("none", "zstd"), default="none", help="zarr inner-chunk compression"
        )
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset already at --output")
    p.add_argument("--no-shuffle", action="store_true", help="keep the input order (default: a seeded permutation)")
    p.add_argument("--shuffle-seed", type=int, default=0, help="seed of the sample permutation (default 0)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint for an s3:// output (e.g. a local server)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _columns(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no column; use e.g. width,height")
    return names


def build_parser(prog: str = "make_shards.py") -> argparse.ArgumentParser:
    """The parser of every conversion command; ``prog`` names the program in usage and errors."""
    parser = _Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("imagefolder", help="class sub-folders of images (bytes kept as they are)")
    p.add_argument("root", help="folder holding one sub-folder per class")
    p.add_argument("--reencode", choices=("jpg", "png"), default=None, help="re-encode images (default: keep bytes)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality for --reencode jpg (default 90)")
    p.add_argument("--path-column", default=None, help="store each file's relative path as this metadata column")
    p.add_argument(
        "--path-pattern",
        default=None,
        help="regex over the relative path; each named group (?P<name>...) becomes a metadata column",
    )
    _add_writer_options(p, arrays=False)

    p = sub.add_parser("arrays", help="an .npz archive, or .npy samples with an optional .npy of labels")
    p.add_argument("path", help=".npz or .npy file of samples (axis 0 = samples)")
    p.add_argument("--labels", default=None, help=".npy file of integer labels (with an .npy path)")
    p.add_argument("--x-key", default="x", help="samples' name in the .npz (default x)")
    p.add_argument("--y-key", default="y", help="labels' name in the .npz (default y; absent: unlabelled)")
    p.add_argument("--num-classes", type=int, default=None, help="labels must lie in 0..N-1 (default max+1)")
    p.add_argument("--tar-encoding", choices=("npy", "png"), default="npy", help="tar member format (default npy)")
    _add_writer_options(p, arrays=True)

    p = sub.add_parser("cifar", help="CIFAR-10/100 python-format folder (parsed without pickle.load)")
    p.add_argument("root", help="cifar-10-batches-py or cifar-100-python folder")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--label-kind", choices=("fine", "coarse"), default="fine", help="CIFAR-100 labels")
    p.add_argument("--tar-encoding", choices=("png", "npy"), default="png", help="tar member format (default png)")
    _add_writer_options(p, arrays=True)

    p = sub.add_parser("parquet", help="a Parquet table with an image-bytes column and a label column")
    p.add_argument("path", help="Parquet file")
    p.add_argument("--image-column", default="image", help="column of image bytes (default image)")
    p.add_argument("--label-column", default="label", help="column of integer labels (default label; '' for none)")
    p.add_argument("--num-classes", type=int, default=None, help="labels must lie in 0..N-1 (default max+1)")
    p.add_argument(
        "--metadata-columns",
        type=_columns,
        default=[],
        help="comma-separated columns copied into the manifest for filters (e.g. width,height)",
    )
    _add_writer_options(p, arrays=False)

    p = sub.add_parser("digits", help="scikit-learn's 8x8 digits (no network)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="every 5th sample is test")
    p.add_argument("--num-samples", type=int, default=None, help="keep the first N of the split (default all)")
    _add_writer_options(p, arrays=True)

    p = sub.add_parser("mnist1d", help="MNIST-1D generated locally by the mnist1d package (no network)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="first 80%% train, last 20%% test")
    p.add_argument("--num-samples", type=int, default=5000, help="samples generated for both splits (default 5000)")
    p.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    _add_writer_options(p, arrays=True)

    p = sub.add_parser("index", help="write a manifest beside existing WebDataset tars (tars unchanged)")
    p.add_argument("root", help="folder or s3://bucket/prefix holding the .tar shards (searched recursively)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint for an s3:// root (e.g. a local server)")
    p.add_argument("--label-ext", default="cls", help="member extension holding the label (default cls; '' for none)")
    p.add_argument("--num-classes", type=int, default=None, help="labels must lie in 0..N-1 (default max+1)")
    p.add_argument(
        "--json-columns",
        type=_columns,
        default=None,
        help="comma-separated keys of each sample's .json member copied into the manifest for filters",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing, different index")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    c = args.command
    if c == "imagefolder":
        return {
            "root": args.root,
            "reencode": args.reencode,
            "quality": args.quality,
            "path_column": args.path_column,
            "path_pattern": args.path_pattern,
        }
    if c == "arrays":
        return {
            "path": args.path,
            "labels": args.labels,
            "x_key": args.x_key,
            "y_key": args.y_key or None,
            "num_classes": args.num_classes,
            "tar_encoding": args.tar_encoding,
        }
    if c == "cifar":
        return {"root": args.root, "split": args.split, "label_kind": args.label_kind, "tar_encoding": args.tar_encoding}
    if c == "parquet":
        return {
            "path": args.path,
            "image_column": args.image_column,
            "label_column": args.label_column or None,
            "num_classes": args.num_classes,
            "metadata_columns": args.metadata_columns,
        }
    if c == "digits":
        return {"split": args.split, "num_samples": args.num_samples}
    return {"split": args.split, "num_samples": args.num_samples, "seed": args.seed}


def _bar(total: int | None, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=" samples", unit_scale=True, dynamic_ncols=True, disable=disable, file=sys.stderr)


def run(args: argparse.Namespace) -> Header:
    """Carry out a parsed command; return the dataset header."""
    start = time.perf_counter()
    if args.command == "index":
        with _bar(None, args.no_progress) as bar:
            header = index_tars(
                args.root,
                label_ext=args.label_ext or None,
                num_classes=args.num_classes,
                overwrite=args.overwrite,
                progress=bar.update,
                metadata=None if args.json_columns is None else JsonColumns(args.json_columns),
                storage_options={"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None,
            )
        where = args.root
    else:
        source = make_source(args.command, **_source_options(args))
        options = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
        writer = DatasetWriter(
            args.output,
            shard_format=args.shard_format,
            max_bytes=args.max_bytes or None,
            max_samples=args.max_samples,
            workers=args.workers,
            compression=getattr(args, "compression", "none"),
            overwrite=args.overwrite,
            storage_options=options,
            keep_order=args.no_shuffle,
            shuffle_seed=args.shuffle_seed,
        )
        progress: Callable[[int], Any]
        with _bar(len(source), args.no_progress) as bar:
            progress = bar.update
            header = writer.write(source, progress)
        where = args.output
    seconds = time.perf_counter() - start
    total = sum(s.bytes for s in header.shards)
    print(
        f"{where}: {header.num_samples} samples in {len(header.shards)} {header.shard_format} shards, "
        f"{total / 1e6:.1f} MB, {seconds:.1f} s ({header.num_samples / max(seconds, 1e-9):.0f} samples/s)"
    )
    return header


#: Packages whose exceptions mean the object store could not be used (credentials, endpoint).
_REMOTE_ERROR_MODULES = ("botocore", "aiobotocore", "s3fs", "aiohttp", "fsspec")


def _is_remote_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in _REMOTE_ERROR_MODULES


def main(argv: list[str] | None = None, prog: str = "make_shards.py") -> int:
    """Run one conversion command; return the exit status (0 ok, 1 failed, 2 bad options, 130 interrupted)."""
    args = build_parser(prog).parse_args(argv)
    try:
        run(args)
    except Exception as exc:  # noqa: BLE001 - filtered below; anything else is a bug and keeps its traceback
        if isinstance(exc, (ShardpruneError, OSError)):
            message = " ".join(str(exc).split())
        elif _is_remote_error(exc):
            message = (
                f"the object store refused the request ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                "check --endpoint-url and the AWS credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            )
        else:
            raise
        print(f"{prog} {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted; re-run the same command to finish", file=sys.stderr)
        return 130
    return 0

