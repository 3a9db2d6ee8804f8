"""Command line: ``python -m shardprune demo|convert|shuffle-report`` (also the ``shardprune`` console script)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from shardprune.errors import ShardpruneError

DESCRIPTION = (
    "shardprune: dynamic data pruning (InfoBatch, SwDPP) inside a streaming shard loader, "
    "so a pruned sample's bytes are never read."
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from shardprune.demo.data import DEFAULT_MNIST1D_SAMPLES, DIGITS_TRAIN_SAMPLES
    from shardprune.demo.trainer import ALL_POLICIES, DATASET_DEFAULTS, DEMO_POLICIES, TrainConfig

    defaults = TrainConfig()

    def per_dataset(key: str) -> str:
        chosen = ", ".join(f"{name} {d[key]}" for name, d in DATASET_DEFAULTS.items())
        return f"default per dataset: {chosen}"

    parser = OneLineParser(prog="shardprune", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    demo = sub.add_parser(
        "demo",
        help="convert a built-in dataset to shards, train with full/random/infobatch/swdpp, print a table and a plot",
        description=(
            "Convert a built-in dataset (MNIST-1D generated offline by the mnist1d package, or "
            "scikit-learn digits) to zarr shards, train the same small model with each policy through "
            "the shardprune loader, and print final test accuracy, sample visits, bytes read and wall "
            "time, each also as a fraction of full data. Writes results.json, table.md and demo.png "
            "under --out."
        ),
    )
    demo.add_argument(
        "--dataset", choices=("mnist1d", "digits"), default="mnist1d", help="built-in dataset (default mnist1d)"
    )
    demo.add_argument(
        "--num-samples",
        type=int,
        default=None,
        metavar="N",
        help=f"mnist1d: samples generated for train and test together, split 80/20 (default "
        f"{DEFAULT_MNIST1D_SAMPLES}); digits: the first N of its {DIGITS_TRAIN_SAMPLES} train samples (default all)",
    )
    demo.add_argument(
        "--epochs", type=int, default=None, help=f"training epochs, the same for every policy; {per_dataset('epochs')}"
    )
    demo.add_argument(
        "--prune-ratio",
        type=float,
        default=defaults.prune_ratio,
        metavar="R",
        help=f"the policies' r in [0, 1) (InfoBatch: at most 0.9) (default {defaults.prune_ratio})",
    )
    demo.add_argument(
        "--seed", type=int, default=defaults.seed, help=f"model init, data and pruning seed (default {defaults.seed})"
    )
    demo.add_argument("--batch-size", type=int, default=None, help=f"samples per batch; {per_dataset('batch_size')}")
    demo.add_argument(
        "--lr", type=float, default=None, help=f"peak Adam learning rate (warm-up + cosine); {per_dataset('lr')}"
    )
    demo.add_argument(
        "--num-workers",
        type=int,
        default=defaults.num_workers,
        help=f"loader worker processes (default {defaults.num_workers}: read in the training process; "
        "with workers, the cpu s column counts the training process only)",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the models are small, and one thread keeps wall times "
        "steady on a busy machine)",
    )
    demo.add_argument(
        "--out", default="shardprune-demo", help="output directory: shards, scores, results (default shardprune-demo)"
    )
    demo.add_argument(
        "--policies",
        default=",".join(DEMO_POLICIES),
        help=f"comma-separated policies to compare, must include full; known: {','.join(ALL_POLICIES)} "
        f"(default {','.join(DEMO_POLICIES)})",
    )
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG (then matplotlib is not needed)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    sub.add_parser(
        "convert",
        add_help=False,
        help="convert data (imagefolder, parquet, arrays, cifar, ...) to shards, or index WebDataset tars in place; "
        "shardprune convert --help",
    )
    from shardprune.loader import quality_cli

    quality_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 failed run, 2 bad options)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["convert"]:
        from shardprune.convert_cli import main as convert_main

        return convert_main(args_list[1:], prog="shardprune convert")
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "shuffle-report":
        from shardprune.loader import quality_cli

        return quality_cli.run(args)
    from shardprune.demo.run import demo_options, run_demo

    try:
        opts = demo_options(args)
        opts.check()
    except ShardpruneError as exc:
        print(f"shardprune demo: error: {exc}", file=sys.stderr)
        return 2
    try:
        run_demo(opts)
    except (ShardpruneError, ImportError, OSError) as exc:
        print(f"shardprune demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shardprune demo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
