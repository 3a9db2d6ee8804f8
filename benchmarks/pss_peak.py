"""Peak memory of a whole process tree: the sum of PSS over a command and all its descendants.

    python benchmarks/pss_peak.py -- python benchmarks/io_bench.py --readers shardprune --mode decode --ratios 0
    python benchmarks/pss_peak.py --interval-ms 20 -- CMD ...

PSS (proportional set size, ``/proc/PID/smaps_rollup``) charges each shared page to the
processes that share it in equal parts, so summing it over a tree counts the forkserver's and
the workers' shared pages (torch, numpy) once, where summed RSS would count them once per
process. The tree is sampled every ``--interval-ms``; the peak of the sum is printed (a peak
shorter than the interval can be missed). Linux only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant alive now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def pss_kib(pid: int) -> int:
    """PSS of one process in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval-ms", type=float, default=50.0, help="sampling interval (default 50)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    proc = subprocess.Popen(command)
    peak = peak_procs = 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        total = sum(pss_kib(p) for p in pids)
        if total > peak:
            peak, peak_procs = total, len(pids)
        time.sleep(args.interval_ms / 1000)
    print(
        f"peak process-tree PSS: {peak / 1024:.1f} MiB over {peak_procs} processes (exit code {proc.returncode})",
        file=sys.stderr,
    )
    return int(proc.returncode)


if __name__ == "__main__":
    sys.exit(main())
