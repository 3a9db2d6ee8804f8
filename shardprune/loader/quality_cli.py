"""``python -m shardprune shuffle-report DATASET``: the shuffle-quality report on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shardprune.errors import ShardpruneError
from shardprune.loader.plan import DEFAULT_SHUFFLE_BLOCK
from shardprune.loader.quality import STORAGE_KINDS, TABLE_HEADER, shuffle_report
from shardprune.loader.shuffle import SHUFFLES

COMMAND = "shuffle-report"


def add_parser(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add the ``shuffle-report`` subcommand to ``sub``."""
    p = sub.add_parser(
        COMMAND,
        help="how well batches are mixed, and what it costs in requests and bytes (reads the manifest only)",
        description=(
            "Plan one epoch of DATASET exactly as the loader would, for every rank, and report the mean "
            "distinct labels and label entropy per batch against a uniform shuffle, the range requests per "
            "epoch and the bytes read per kept byte. No sample byte is read."
        ),
    )
    p.add_argument("dataset", help="dataset directory or s3://bucket/prefix")
    p.add_argument("--batch-size", type=int, required=True, help="samples per batch and rank")
    p.add_argument("--world-size", type=int, default=1, help="ranks (default 1)")
    p.add_argument(
        "--shuffle", action="append", choices=sorted(SHUFFLES), default=None,
        help="shuffle mode; repeat to compare modes (default: the loader's default for the storage kind)",
    )  # fmt: skip
    p.add_argument("--shuffle-window", type=int, default=4, help="shards read round-robin (window mode, default 4)")
    p.add_argument("--shuffle-buffer", type=int, default=1024, help="shuffle buffer / read chunk (default 1024)")
    p.add_argument("--shuffle-block", type=int, default=DEFAULT_SHUFFLE_BLOCK,
                   help=f"adjacent samples per block (block mode, default {DEFAULT_SHUFFLE_BLOCK})")
    p.add_argument("--seed", type=int, default=0, help="loader seed (default 0)")
    p.add_argument("--epoch", type=int, default=0, help="epoch to plan (default 0)")
    p.add_argument("--keep-fraction", type=float, default=1.0, help="fraction kept, drawn at random (default 1)")
    p.add_argument("--storage", choices=STORAGE_KINDS, default=None,
                   help="I/O defaults to assume (default: the dataset's own kind)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint for an s3:// dataset")
    p.add_argument("--json", action="store_true", help="print one JSON object per mode instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print the report; return the exit status (0 ok, 2 bad settings, 1 unreadable dataset)."""
    options = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    modes: list[str | None] = list(args.shuffle) if args.shuffle else [None]
    try:
        reports = [
            shuffle_report(
                args.dataset, batch_size=args.batch_size, world_size=args.world_size, storage=args.storage,
                storage_options=options, shuffle=mode, shuffle_window=args.shuffle_window,
                shuffle_buffer=args.shuffle_buffer, shuffle_block=args.shuffle_block, seed=args.seed,
                epoch=args.epoch, keep_fraction=args.keep_fraction,
            )  # fmt: skip
            for mode in modes
        ]
    except (ShardpruneError, OSError) as exc:
        print(f"shardprune {COMMAND}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    if args.json:
        for r in reports:
            print(json.dumps(r.to_dict(), sort_keys=True))
    else:
        first = reports[0]
        print(f"{args.dataset}: {first.kept:,} samples, batch {first.batch_size} x {first.world_size} ranks, "
              f"{first.batches:,} full batches per epoch")
        print(TABLE_HEADER)
        for r in reports:
            print(r.row())
    return 0
