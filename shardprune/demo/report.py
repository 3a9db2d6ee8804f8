"""The demo's table: accuracy, sample visits, bytes read, wall and CPU time, each also as a fraction of full."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shardprune.demo.trainer import RunResult
from shardprune.errors import ConfigError


@dataclass(frozen=True)
class Row:
    """One policy's line of the table; ``*_frac`` are ratios to the ``full`` run."""

    policy: str
    prune_ratio: float
    test_acc: float
    visits: int
    bytes_read: int
    wall_s: float
    cpu_s: float
    acc_frac: float
    visits_frac: float
    bytes_frac: float
    wall_frac: float
    cpu_frac: float


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def table_rows(results: Sequence[RunResult]) -> list[Row]:
    """Rows in run order, relative to the run whose policy is ``full``.

    Raises:
        ConfigError: no ``full`` run to compare against.
    """
    full = next((r for r in results if r.policy == "full"), None)
    if full is None:
        raise ConfigError("the table needs a 'full' run to compare against; add 'full' to --policies")
    return [
        Row(
            policy=r.policy,
            prune_ratio=r.prune_ratio,
            test_acc=r.final_test_acc,
            visits=r.visits,
            bytes_read=r.bytes_read,
            wall_s=r.wall_s,
            cpu_s=r.cpu_s,
            acc_frac=_ratio(r.final_test_acc, full.final_test_acc),
            visits_frac=_ratio(r.visits, full.visits),
            bytes_frac=_ratio(r.bytes_read, full.bytes_read),
            wall_frac=_ratio(r.wall_s, full.wall_s),
            cpu_frac=_ratio(r.cpu_s, full.cpu_s),
        )
        for r in results
    ]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


HEADER = (
    "policy", "r", "test acc", "x full", "visits", "x full", "bytes read", "x full", "wall s", "x full", "cpu s", "x full",
)


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table (also valid Markdown)."""
    body = [
        (
            row.policy,
            f"{row.prune_ratio:.2f}",
            f"{row.test_acc:.4f}",
            f"{row.acc_frac:.3f}",
            f"{row.visits:,}",
            f"{row.visits_frac:.3f}",
            human_bytes(row.bytes_read),
            f"{row.bytes_frac:.3f}",
            f"{row.wall_s:.1f}",
            f"{row.wall_frac:.3f}",
            f"{row.cpu_s:.1f}",
            f"{row.cpu_frac:.3f}",
        )
        for row in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(HEADER)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(HEADER), sep, *(line(b) for b in body)])
