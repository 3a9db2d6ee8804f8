"""Lightning DDP with two real processes (gloo on CPU): each rank trains its share, pruning works.

Lightning creates the process group inside ``fit``, after a script's module-level code ran.
A loader made there sees one process (rank 0 of 1) on the launching rank and rank 0 of 2 on
the relaunched one: both ranks would have read the wrong share of every epoch, and two
ScoreStore writers fought over the store. The README's pattern makes the loader and a
DistributedScores store in ``LightningModule.setup`` (the process group exists there), and
``PruningCheckpoint`` takes functions returning them; a loader made too early refuses to plan
with an error naming the fix, on every rank (no rank hangs waiting for another).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loader_data import N, write_dataset

pytest.importorskip("lightning")
SCRIPT = Path(__file__).with_name("lightning_ddp_script.py")


def _fit(out: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """Run the script (Lightning starts rank 1 itself) on the test dataset, writing into ``out``."""
    data = out.parent / "data"
    if not data.exists():
        write_dataset(data)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([sys.executable, str(SCRIPT), str(data), str(out), mode],
                          capture_output=True, text=True, timeout=240, cwd=out, env=env)


def test_ddp_ranks_train_disjoint_shares_and_prune(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    run = _fit(tmp_path / "run", "setup")
    assert run.returncode == 0, run.stderr[-6000:]
    ranks = [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    for epoch in ("0", "1", "2"):
        shares = [r["seen"][epoch] for r in ranks]
        stats = [r["stats"][epoch] for r in ranks]
        assert len(shares[0]) == len(shares[1])  # equal steps: no rank waits in an all-reduce
        padded = sum(int(s["padded"]) for s in stats)
        repeats = sum(c - 1 for c in Counter(shares[0] + shares[1]).values())
        assert repeats <= padded, (epoch, repeats, padded)  # only pad slots repeat a sample
        skipped = int(stats[0]["samples_skipped"])
        assert skipped == int(stats[1]["samples_skipped"])  # one plan for both ranks
        union = set(shares[0]) | set(shares[1])
        trimmed = sum(int(s["trimmed"]) for s in stats)
        assert len(union) == N - skipped - trimmed, (epoch, len(union), skipped, trimmed)
        if epoch == "0":
            assert skipped == 0
        else:
            assert skipped > 0  # InfoBatch prunes from epoch 1: the ranks' reports reached the scores
    # The store rank 0 wrote holds every rank's reports: every sample visited in epoch 0.
    from shardprune import ScoreStore, open_dataset

    ds = open_dataset(tmp_path / "data")
    with ScoreStore(tmp_path / "run" / "scores", len(ds), ds.fingerprint, writer=False) as store:
        visits = store.snapshot().visits
    assert int((visits >= 1).sum()) == N


def test_a_loader_made_before_the_process_group_refuses_on_every_rank(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    run = _fit(tmp_path / "run", "module-level")
    assert run.returncode != 0
    assert "this loader was made for rank 0 of 1" in run.stderr, run.stderr[-6000:]
    assert "this loader was made for rank 0 of 2" in run.stderr, run.stderr[-6000:]
    assert "LightningModule.setup()" in run.stderr


def test_a_preempted_ddp_run_resumes_exactly(tmp_path: Path) -> None:
    """Stopped after batch 2 of epoch 1 and resumed from that checkpoint, each rank trains
    exactly the batches the uninterrupted run trained after that point, in the same order."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    for out, mode in ((whole, "setup"), (cut, "stop"), (cut, "resume")):
        run = _fit(out, mode)
        assert run.returncode == 0, (mode, run.stderr[-6000:])
        if mode == "stop":
            stopped = [json.loads((cut / f"rank{r}.json").read_text())["seen"] for r in (0, 1)]
    for rank in (0, 1):
        expected = json.loads((whole / f"rank{rank}.json").read_text())["seen"]
        resumed = json.loads((cut / f"rank{rank}.json").read_text())["seen"]
        assert stopped[rank]["1"] == expected["1"][: 2 * 32]  # the same run up to the stop
        assert resumed["1"] == expected["1"][2 * 32 :]  # the rest of epoch 1, not a replay
        assert resumed["2"] == expected["2"]
