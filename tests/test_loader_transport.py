"""Worker processes: results cross as one shared-memory tensor, unchanged; a dead worker is an error, not a hang."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.multiprocessing as mp
from loader_data import KillWorkerOnce, write_dataset

from shardprune.errors import FetchError
from shardprune.loader import StreamingLoader
from shardprune.loader.fetch import UnitResult


def _result() -> UnitResult:
    rng = np.random.default_rng(0)
    samples = [
        (5, {"id": 12, "label": 3, "__key__": "0000000012", "jpg": rng.bytes(1000), "txt": "a caption"}),
        (
            2,
            {
                "id": 2**40 + 3,
                "npy": rng.standard_normal((3, 4)).astype(np.float32),
                "img": rng.integers(0, 255, (3, 8, 8), dtype=np.uint8),
                "tokens": rng.integers(0, 50_000, 17, dtype=np.int64),
                "empty": np.zeros((0, 4), dtype=np.float32),
                "raw": b"",
            },
        ),
    ]
    return UnitResult(index=7, samples=samples, bytes_read=11, requests=2, gap_bytes=1)


def _same(a: UnitResult, b: UnitResult) -> None:
    assert (a.index, a.bytes_read, a.requests, a.gap_bytes) == (b.index, b.bytes_read, b.requests, b.gap_bytes)
    assert [slot for slot, _ in a.samples] == [slot for slot, _ in b.samples]
    for (_, x), (_, y) in zip(a.samples, b.samples):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], np.ndarray):
                assert isinstance(y[key], np.ndarray)
                assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape
                np.testing.assert_array_equal(x[key], y[key])
            else:
                assert type(x[key]) is type(y[key]) and x[key] == y[key], key


def test_pack_then_unpack_restores_every_value() -> None:
    want, got = _result(), _result()
    got.pack()
    assert got.packed is not None
    assert got.samples[0][1]["jpg"] is None  # the bytes left the sample dicts
    assert got.samples[0][1]["txt"] == "a caption"  # what cannot be packed stays
    got.unpack()
    assert got.packed is None
    _same(want, got)


def test_unpack_of_an_unpacked_result_changes_nothing() -> None:
    want, got = _result(), _result()
    got.unpack()
    _same(want, got)


def _send(q: "mp.Queue[UnitResult]", received: Any) -> None:
    result = _result()
    result.pack()
    q.put(result)
    received.wait(60)  # the sender lives until the receiver has mapped the shared memory, as workers do


def test_packed_result_crosses_a_real_process_queue() -> None:
    ctx = mp.get_context("spawn")
    q: "mp.Queue[UnitResult]" = ctx.Queue()
    received = ctx.Event()
    proc = ctx.Process(target=_send, args=(q, received))
    proc.start()
    got = q.get(timeout=60)
    received.set()
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert got.packed is not None and got.packed.is_shared()
    got.unpack()
    _same(_result(), got)


def test_a_killed_worker_fails_the_epoch_clearly_and_a_new_pass_recovers(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds")
    marker = tmp_path / "kill-once"
    marker.touch()
    with StreamingLoader(tmp_path / "ds", batch_size=16, num_epochs=2, num_workers=2, shuffle_buffer=32,
                         transform=KillWorkerOnce(str(marker))) as loader:
        loader.set_epoch(0)
        with pytest.raises(FetchError, match=r"worker process \d+ died \(killed by SIGKILL, e.g. by the out-of-memory killer\).* set_epoch\(0\)"):
            for _ in loader:
                pass
        assert not marker.exists()
        loader.set_epoch(0)  # as the error says: the epoch again, with new workers
        ids = [i for batch in loader for i in batch["ids"].tolist()]
        assert loader.plan is not None and loader.plan.epoch == 0
        assert ids == loader.plan.ids().tolist()
        assert loader._pool is not None and loader._pool.started == 3  # the dead worker was replaced, once


def test_workers_start_once_and_serve_every_epoch(tmp_path: Path) -> None:
    from loader_data import as_float

    write_dataset(tmp_path / "ds")
    with StreamingLoader(tmp_path / "ds", batch_size=16, num_epochs=3, num_workers=0, shuffle_buffer=32, max_block=4096,
                         transform=as_float) as ref:
        want = [[i for b in ref for i in b["ids"].tolist()] for _ in range(3)]
    with StreamingLoader(tmp_path / "ds", batch_size=16, num_epochs=3, num_workers=2, shuffle_buffer=32, max_block=4096,
                         transform=as_float) as loader:
        pids: set[int] = set()
        it = iter(loader)
        next(it)
        del it  # an abandoned pass: its queued units are skipped, their results dropped
        loader.set_epoch(0)
        for epoch in range(3):
            ids = []
            for batch in loader:
                ids.extend(batch["ids"].tolist())
                pids.update(batch["seen_by_pid"].tolist())
            assert ids == want[epoch]
        assert loader._pool is not None
        assert loader._pool.started == 2 and pids == set(loader._pool.pids())
        procs = list(loader._pool._procs)
    assert all(not p.is_alive() for p in procs)  # close() stopped them


def test_a_pass_opened_early_is_read_behind_the_current_one_and_adopted(tmp_path: Path) -> None:
    from shardprune.dataset import open_dataset
    from shardprune.loader.fetch import UnitFetcher
    from shardprune.loader.ioplan import plan_reads
    from shardprune.loader.workers import PoolMapper, WorkerPool

    write_dataset(tmp_path / "ds")
    ds = open_dataset(tmp_path / "ds")
    m = ds.manifest
    slots = np.arange(len(ds))
    units = plan_reads(slots, slots, m.shard, m.offset, m.length, max_gap=0, max_block=4096, gap_budget=0.0)
    later = plan_reads(slots[::2], slots[::2], m.shard, m.offset, m.length, max_gap=0, max_block=4096, gap_budget=0.0)
    assert len(units) > 8 and len(later) > 8
    local = UnitFetcher(ds)
    want = [[s for s, _ in local(u).samples] for u in later]
    pool = WorkerPool(UnitFetcher(ds, pack=True), 2, "forkserver")
    try:
        first = PoolMapper(units, pool, epoch=0)
        got_first = [r.index for r in first]
        pool.open_early(later)  # the current pass has queued all its units: the early one is queued now
        second = PoolMapper(later, pool, epoch=1)
        got = []
        for r in second:
            r.unpack()
            got.append([s for s, _ in r.samples])
        assert got_first == list(range(len(units)))
        assert pool.adopted == 1 and got == want
        # An early pass that is not the one served next is cancelled, not read into the next.
        pool.open_early(later)
        third = PoolMapper(units, pool, epoch=2)
        assert [r.index for r in third] == list(range(len(units))) and pool.adopted == 1
    finally:
        pool.close()


def test_a_script_without_the_main_guard_gets_the_reason_its_workers_die(tmp_path: Path) -> None:
    """Workers under forkserver re-import the script; one without ``if __name__ == "__main__"`` fails them."""
    import subprocess
    import sys

    write_dataset(tmp_path / "ds")
    script = tmp_path / "train.py"
    script.write_text(
        "from shardprune.loader import StreamingLoader\n"
        f"loader = StreamingLoader({str(tmp_path / 'ds')!r}, batch_size=16, num_epochs=1, num_workers=1)\n"
        "for batch in loader:\n"
        "    pass\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("shardprune.errors.FetchError")]
    assert errors, run.stderr[-3000:]
    assert "loader worker process" in errors[0] and "(exit code 1: it raised before serving" in errors[0]
    assert 'if __name__ == "__main__":' in errors[0]
