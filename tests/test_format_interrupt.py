"""A conversion killed mid-way (SIGKILL of the real tool process and its workers) never
leaves a dataset that looks complete, and re-running the same command finishes it with
the same bytes as an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shardprune.dataset import ShardedDataset
from shardprune.errors import DatasetNotFoundError
from shardprune.format.header import HEADER_NAME
from shardprune.format.writer import STAGING_NAME

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "make_shards.py"


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _command(src: Path, out: Path, workers: int) -> list[str]:
    return [
        sys.executable, str(TOOL), "arrays", str(src), "-o", str(out),
        "--max-samples", "50", "--workers", str(workers), "--no-progress",
    ]  # fmt: skip


def _default_sigint() -> None:
    # A child of a shell job that ignores SIGINT would inherit the ignoring; Ctrl-C must reach it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_when_shards_appear(
    cmd: list[str], out: Path, min_shards: int, timeout: float = 60.0, sig: int = signal.SIGKILL
) -> tuple[int, str]:
    """Start ``cmd`` in its own process group, signal the group once ``min_shards`` shards are staged.

    Returns the exit status and the command's stderr.
    """
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )
    staged = out / STAGING_NAME / "shards"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if staged.is_dir() and sum(1 for p in staged.iterdir() if p.name.endswith(".tar")) >= min_shards:
                break
            time.sleep(0.005)
        finished_first = proc.poll() is not None
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        finished_first = True
    _, err = proc.communicate(timeout=60)
    if finished_first:
        pytest.fail(f"conversion ended before it could be interrupted: rc={proc.returncode}, {err!r}")
    return proc.returncode, err


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_conversion_is_not_a_dataset_and_rerun_finishes(tmp_path: Path, workers: int) -> None:
    rng = np.random.default_rng(0)
    # 6,000 samples of 2 KB in 120 shards: long enough to be killed while shards are being written.
    x = rng.integers(0, 255, (6000, 2048), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", x=x, y=rng.integers(0, 10, 6000))
    clean, out = tmp_path / "clean", tmp_path / "out"
    subprocess.run(_command(tmp_path / "in.npz", clean, 2), check=True, capture_output=True, timeout=300)

    rc, _ = _kill_when_shards_appear(_command(tmp_path / "in.npz", out, workers), out, min_shards=3)
    assert rc == -signal.SIGKILL
    assert not (out / HEADER_NAME).exists()
    with pytest.raises(DatasetNotFoundError, match="re-running it"):
        ShardedDataset(out)

    rerun = subprocess.run(_command(tmp_path / "in.npz", out, workers), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not (out / STAGING_NAME).exists()
    assert _digest(out) == _digest(clean)
    ds = ShardedDataset(out)
    for i in (0, 2999, 5999):
        assert ds.read_sample(i)["label"] == ds.labels[i]


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_exits_130_with_one_line_and_leaves_no_dataset(tmp_path: Path, workers: int) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "in.npz", x=rng.integers(0, 255, (6000, 2048), dtype=np.uint8), y=rng.integers(0, 10, 6000))
    out = tmp_path / "out"
    cmd = _command(tmp_path / "in.npz", out, workers)
    rc, err = _kill_when_shards_appear(cmd, out, min_shards=3, sig=signal.SIGINT)
    assert rc == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err and "interrupted; re-run the same command" in err, err
    assert not (out / HEADER_NAME).exists() and not (out / STAGING_NAME).exists()
    rerun = subprocess.run(_command(tmp_path / "in.npz", out, workers), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(ShardedDataset(out)) == 6000
