"""A rank that dies ends the others promptly, with an error naming it (real gloo ranks, SIGKILL)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dist_workers import launch

from shardprune.dist.liveness import PROBE_S


def test_a_killed_rank_is_named_and_the_others_stop(tmp_path: Path) -> None:
    world, victim = 3, 1
    t0 = time.monotonic()
    codes = launch("dead_rank", world, tmp_path, join_s=120.0, store=str(tmp_path / "scores"), victim=victim)
    wall = time.monotonic() - t0
    out = tmp_path / f"out-dead_rank-{world}"
    killed_at = float((out / "killed_at.txt").read_text())
    assert codes[victim] == -9  # SIGKILL
    for rank in (0, 2):
        assert codes[rank] == 1, (rank, codes)  # raised, not hung and killed by launch
        doc = json.loads((out / f"rank{rank}.json").read_text())
        assert doc["error"].startswith(f"rank(s) [{victim}] of {world} stopped answering"), doc["error"]
        assert "(RuntimeError: " in doc["error"]  # gloo's own cause travels along
        # Bounded by the probe, far below the process group's 60 s collective timeout.
        assert doc["at"] - killed_at < PROBE_S + 5.0, doc["at"] - killed_at
        assert doc["step"] == 3
    assert wall < 90


def test_a_failure_with_every_rank_alive_says_so(tmp_path: Path) -> None:
    """A real one-rank gloo group: the rank checks in, so the error blames the calls, not a dead rank."""
    import pytest
    import torch.distributed as dist

    from shardprune.dist.liveness import guarded
    from shardprune.errors import DistributedError

    def broken() -> None:
        raise RuntimeError("gloo: op.preamble.length <= op.nbytes. 24 vs 16")

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        assert guarded("all_gather", lambda: 7) == 7
        t0 = time.monotonic()
        with pytest.raises(DistributedError, match=r"collective #1 \(all_gather\) failed on rank 0 while all 1 ranks"
                           r" are alive.*different collectives.*\(RuntimeError: gloo: op.preamble") as info:
            guarded("all_gather", broken)
        assert isinstance(info.value.__cause__, RuntimeError)
        assert time.monotonic() - t0 < PROBE_S  # nobody is missing: no waiting for the probe
    finally:
        dist.destroy_process_group()


def test_a_destroyed_group_is_not_kept_alive(tmp_path: Path) -> None:
    codes = launch("group_released", 2, tmp_path)
    out = tmp_path / "out-group_released-2"
    assert codes == [0, 0]
    for r in range(2):
        doc = json.loads((out / f"rank{r}.json").read_text())
        assert doc == {"parts": 2, "released": True}
