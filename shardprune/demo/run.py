"""``python -m shardprune demo``: convert, train every policy through the loader, table and plot."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from shardprune.demo.data import BUILTIN_DATASETS, DEFAULT_MNIST1D_SAMPLES, check_num_samples, load_arrays, prepare_data
from shardprune.demo.report import Row, format_table, table_rows
from shardprune.demo.trainer import ALL_POLICIES, DATASET_DEFAULTS, DEMO_POLICIES, RunResult, TrainConfig, train_policy
from shardprune.errors import ConfigError
from shardprune.validate import check_int

@dataclass(frozen=True)
class DemoOptions:
    """Options of ``python -m shardprune demo`` (see its ``--help``)."""

    dataset: str = "mnist1d"
    num_samples: int | None = None
    out: str = "shardprune-demo"
    policies: tuple[str, ...] = DEMO_POLICIES
    train: TrainConfig = field(default_factory=TrainConfig)
    plot: bool = True
    progress: bool = True
    threads: int = 1

    def check(self) -> None:
        if self.dataset not in BUILTIN_DATASETS:
            raise ConfigError(f"--dataset {self.dataset!r}; expected one of {BUILTIN_DATASETS}")
        try:
            check_num_samples(self.dataset, self.num_samples)
        except ConfigError as exc:
            raise ConfigError(f"--num-samples: {exc}") from None
        unknown = [p for p in self.policies if p not in ALL_POLICIES]
        if unknown:
            raise ConfigError(f"--policies {unknown}: unknown; expected names from {ALL_POLICIES}")
        if "full" not in self.policies:
            raise ConfigError("--policies must include 'full': every other row is reported as a fraction of it")
        if not self.out:
            raise ConfigError("--out is empty; pass an output directory")
        try:
            check_int("threads", self.threads, 1, fix="the torch intra-op threads, e.g. 1")
        except ConfigError as exc:
            raise ConfigError(f"--threads {self.threads!r}: {exc}") from None
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"--policies {list(self.policies)} names a policy twice")
        self.train.check()
        from shardprune.policies import make_policy

        for name in self.policies:
            if name != "full":
                try:
                    make_policy(name, prune_ratio=self.train.prune_ratio)
                except ConfigError as exc:
                    raise ConfigError(f"--prune-ratio {self.train.prune_ratio:g} for {name}: {exc}") from None

    @property
    def samples(self) -> int | None:
        if self.num_samples is None and self.dataset == "mnist1d":
            return DEFAULT_MNIST1D_SAMPLES
        return self.num_samples


@dataclass
class DemoReport:
    """What the demo produced: the runs, the table rows and the files written."""

    results: list[RunResult]
    rows: list[Row]
    table: str
    files: dict[str, str]
    wall_s: float


def machine_info() -> dict[str, Any]:
    """CPU model, core count and memory of this machine, for result files."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def run_demo(opts: DemoOptions, *, stream: TextIO | None = None) -> DemoReport:
    """Run the demo end to end and write ``results.json``, ``table.md`` and ``demo.png`` under ``opts.out``.

    Args:
        opts: The demo's options.
        stream: Where the table and messages go (default ``sys.stdout``).
    """
    opts.check()
    import torch

    # The models are tiny: a second intra-op thread buys little, and on a busy machine its
    # spinning barrier turns every stolen time slice into a stall that lands in wall time.
    torch.set_num_threads(opts.threads)
    out = sys.stdout if stream is None else stream
    root = Path(opts.out)
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"converting {opts.dataset} (num_samples={opts.samples or 'all'}) to zarr shards under {root / 'data'} ...", file=out)
    data = prepare_data(opts.dataset, root, num_samples=opts.samples)
    test = load_arrays(data.test, data.field)
    print(
        f"train: {len(data.train)} samples in {len(data.train.header.shards)} shards; "
        f"test: {len(data.test)} samples",
        file=out,
    )
    results: list[RunResult] = []
    for name in opts.policies:
        results.append(
            train_policy(data, name, opts.train, root / "runs" / name, test=test, progress=opts.progress)
        )
    rows = table_rows(results)
    table = format_table(rows)
    files: dict[str, str] = {}
    doc = {
        "dataset": opts.dataset,
        "num_samples": opts.samples,
        "train_samples": len(data.train),
        "test_samples": len(data.test),
        "config": asdict(opts.train),
        "machine": machine_info(),
        "rows": [asdict(r) for r in rows],
        "runs": [r.to_json() for r in results],
    }
    files["results"] = os.fspath(root / "results.json")
    with open(files["results"], "w") as f:
        json.dump(doc, f, indent=1)
    files["table"] = os.fspath(root / "table.md")
    with open(files["table"], "w") as f:
        f.write(table + "\n")
    if opts.plot:
        from shardprune.demo.plot import plot_results

        title = (
            f"{opts.dataset}: {len(data.train)} train samples, {opts.train.epochs} epochs, "
            f"r={opts.train.prune_ratio:g}, seed {opts.train.seed}"
        )
        files["plot"] = os.fspath(plot_results(results, root / "demo.png", title=title))
    wall = time.perf_counter() - t_start
    print("", file=out)
    print(
        f"{opts.dataset}, {len(data.train)} train / {len(data.test)} test samples, {opts.train.epochs} epochs, "
        f"prune ratio {opts.train.prune_ratio:g}, seed {opts.train.seed}, {opts.threads} torch thread(s):",
        file=out,
    )
    print(table, file=out)
    for kind, path in files.items():
        print(f"{kind}: {path}", file=out)
    print(f"total {wall:.1f} s", file=out)
    return DemoReport(results, rows, table, files, wall)


def parse_policies(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def demo_options(args: Any) -> DemoOptions:
    """Build :class:`DemoOptions` from the parsed ``demo`` sub-command."""
    chosen = DATASET_DEFAULTS[args.dataset]
    train = TrainConfig(
        epochs=chosen["epochs"] if args.epochs is None else args.epochs,
        batch_size=chosen["batch_size"] if args.batch_size is None else args.batch_size,
        lr=chosen["lr"] if args.lr is None else args.lr,
        ema_beta=chosen["ema_beta"],
        prune_ratio=args.prune_ratio,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    return DemoOptions(
        dataset=args.dataset,
        num_samples=args.num_samples,
        out=args.out,
        policies=parse_policies(args.policies),
        train=train,
        plot=not args.no_plot,
        progress=not args.no_progress,
        threads=args.threads,
    )

