"""A writer process killed with SIGKILL in the middle of a flush leaves a readable store.

The child is a real Python process running the real store against a local directory;
the parent kills it while it writes a generation and then reads the last complete state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from shardprune.scores import ScoreStore
from shardprune.scores.generations import read_commit
from shardprune.storage import Storage

FP = "crash-test"
N = 1 << 20

# Round k sets every sample's loss to k (visits k, epoch k) and flushes all chunks,
# so any mix of two rounds in one state is visible.
CHILD = """
import sys, time
import numpy as np
from shardprune.scores.store import ScoreStore
root, n = sys.argv[1], int(sys.argv[2])
st = ScoreStore(root, n, "crash-test", flush_interval_s=None, chunk_size=n // 64)
ids = np.arange(n)
k = int(st.snapshot(pin=False).visits[0])
for _ in range(500):
    k += 1
    st.apply(ids, np.full(n, float(k), np.float32), k)
    print(f"start {k}", flush=True)
    t = time.perf_counter()
    st.flush()
    print(f"committed {k} {time.perf_counter() - t:.4f}", flush=True)
"""


def run_and_kill(root: Path, fraction: float) -> int:
    """Start a writer, let it commit twice, SIGKILL it ``fraction`` into a flush; return the last commit it reported."""
    child = subprocess.Popen(
        [sys.executable, "-u", "-c", CHILD, str(root), str(N)],
        stdout=subprocess.PIPE,
        text=True,
    )
    committed = -1
    flush_s: list[float] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            word, k, *rest = line.split()
            if word == "committed":
                committed = int(k)
                flush_s.append(float(rest[0]))
            elif word == "start" and len(flush_s) >= 2:
                time.sleep(fraction * float(np.median(flush_s)))
                break
        else:
            raise AssertionError(f"the writer exited early with code {child.wait()}")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            # Lines printed before the kill landed: a commit may have completed meanwhile.
            for line in child.stdout:
                word, k, *_ = line.split()
                if word == "committed":
                    committed = int(k)
    assert child.returncode == -signal.SIGKILL
    return committed


def orphans(root: Path) -> set[str]:
    commit = read_commit(Storage(root))
    assert commit is not None
    return {p.name for p in root.iterdir() if p.name.startswith("gen-")} - commit.live_dirs()


def test_sigkill_during_flush_leaves_the_last_complete_state(tmp_path: Path) -> None:
    root = tmp_path / "scores"
    caught_mid_flush = 0
    attempts = 0
    for fraction in (0.5, 0.3, 0.7, 0.15, 0.85, 0.5):
        attempts += 1
        committed = run_and_kill(root, fraction)
        caught_mid_flush += bool(orphans(root))
        with ScoreStore(root, N, FP, writer=False, flush_interval_s=None) as reader:
            snap = reader.snapshot()
        k = int(snap.visits[0])
        # One whole round, never chunks of two rounds; the kill may land after the pointer
        # was replaced but before "committed" was printed.
        assert k in (committed, committed + 1), (k, committed)
        assert (snap.visits == k).all() and (snap.loss == k).all() and (snap.last_epoch == k).all()
        if caught_mid_flush and attempts >= 2:
            break
    assert caught_mid_flush, "no kill landed inside a flush; the test did not exercise a partial generation"
    # A new writer takes over, commits, and removes what the killed one left behind.
    with ScoreStore(root, N, FP, flush_interval_s=None) as writer:
        writer.apply(np.arange(N), np.full(N, float(k + 1), np.float32), k + 1)
        writer.flush()
    assert not orphans(root)
    with ScoreStore(root, N, FP, writer=False, flush_interval_s=None) as reader:
        assert (reader.snapshot().visits == k + 1).all()
