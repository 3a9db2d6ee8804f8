"""tools/train_ddp.py under torchrun: DDP + InfoBatch on digits, 2 CPU ranks vs 1 rank, and resume.

What is compared between 2 ranks of batch 32 and 1 rank of batch 64 (the same global
batch and schedule; DDP averages the ranks' gradients). The runs cannot be identical:
each rank's batch is a different 32 samples of the epoch's plan than the single
process's halves of 64, and the model sees them in another order. Measured on this
machine: Spearman correlation of the final per-sample loss scores 0.94, mean score
0.0295 vs 0.0310, kept fraction per epoch within 0.01, test accuracy 0.969 vs 0.964.
The test asserts, with margin: Spearman >= 0.8; mean final score within a factor 1.5;
the kept fraction of every epoch within 0.05; test accuracy >= 0.93 for both and within
0.03 of each other. A stopped-and-resumed 2-rank run must end with exactly the scores
of the uninterrupted one (same fingerprint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardprune.dataset import open_dataset
from shardprune.dist import read_checkpoint
from shardprune.demo.data import prepare_data
from shardprune.scores import ScoreStore

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "train_ddp.py"


def _torchrun(nproc: int, args: list[str], timeout: int = 150) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(TOOL), *args]
    # A rank that aborts (SIGABRT) prints every thread's Python stack: the failure says which.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("digits")
    data = prepare_data("digits", root)
    return {"train": data.train.storage.url, "test": data.test.storage.url, "root": str(root)}


def _common(digits: dict[str, str], out: Path, batch: int) -> list[str]:
    return [
        "--data", digits["train"], "--test-data", digits["test"], "--model", "mlp", "--input-scale", "0.0625",
        "--scores", str(out / "scores"), "--checkpoint", str(out / "ckpt.json"), "--metrics-out", str(out / "m.json"),
        "--epochs", "10", "--batch-size", str(batch), "--policy", "infobatch", "--prune-ratio", "0.5", "--lr", "0.01",
    ]  # fmt: skip


def _run(nproc: int, args: list[str]) -> None:
    run = _torchrun(nproc, args)
    assert run.returncode == 0, run.stderr[-12000:]


def _scores(digits: dict[str, str], store: Path) -> np.ndarray:
    ds = open_dataset(digits["train"])
    with ScoreStore(store, len(ds), ds.fingerprint, writer=False) as s:
        return np.asarray(s.snapshot().loss)


def _metrics(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "m.json").read_text())
    return doc


@pytest.mark.slow
def test_two_ranks_match_one_rank_with_the_same_global_batch(digits: dict[str, str], tmp_path: Path) -> None:
    from scipy.stats import spearmanr

    one, two = tmp_path / "one", tmp_path / "two"
    _run(1, _common(digits, one, 64))
    _run(2, _common(digits, two, 32))
    m1, m2 = _metrics(one), _metrics(two)
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m1["global_batch"] == m2["global_batch"] == 64
    s1, s2 = _scores(digits, one / "scores"), _scores(digits, two / "scores")
    assert m1["scores_fingerprint"] != m2["scores_fingerprint"]  # different batches: not identical runs
    assert spearmanr(s1, s2).statistic >= 0.8
    assert 1 / 1.5 <= float(s2.mean()) / float(s1.mean()) <= 1.5
    k1 = [e["kept_fraction"] for e in m1["epochs"]]
    k2 = [e["kept_fraction"] for e in m2["epochs"]]
    assert max(abs(a - b) for a, b in zip(k1, k2)) <= 0.05
    assert min(k1[1:-1]) < 0.8, "InfoBatch did not prune: nothing to compare"
    assert m1["test_acc"] >= 0.93 and m2["test_acc"] >= 0.93
    assert abs(m1["test_acc"] - m2["test_acc"]) <= 0.03
    # Every sample was visited each full epoch (epoch 0 and the annealing epoch) on 2 ranks.
    assert m2["epochs"][0]["visits"] == m2["epochs"][-1]["visits"] == len(s2)


@pytest.mark.slow
def test_stop_mid_epoch_and_resume_exactly(digits: dict[str, str], tmp_path: Path) -> None:
    """Stop mid-epoch and resume: exactly the uninterrupted run; under another rank count: refused."""
    whole, sliced = tmp_path / "whole", tmp_path / "sliced"
    _run(2, [*_common(digits, whole, 32), "--epochs", "3"])
    _run(2, [*_common(digits, sliced, 32), "--epochs", "3", "--stop-after", "37"])  # epoch 0: 23 steps
    assert _metrics(sliced)["stopped_after"] == 37
    assert not read_checkpoint(sliced / "ckpt.json")["epoch_complete"]
    # The mid-epoch 2-rank checkpoint under 1 rank: refused, naming both sizes.
    bad = _torchrun(1, [*_common(digits, sliced, 64), "--epochs", "3", "--resume"])
    assert bad.returncode != 0
    assert "world_size=2" in bad.stderr and "world_size=1" in bad.stderr and "middle of epoch 1" in bad.stderr
    _run(2, [*_common(digits, sliced, 32), "--epochs", "3", "--resume"])
    assert _metrics(sliced)["scores_fingerprint"] == _metrics(whole)["scores_fingerprint"]
    assert _metrics(sliced)["test_acc"] == _metrics(whole)["test_acc"]


@pytest.mark.slow
def test_epoch_end_checkpoint_resumes_under_another_rank_count(digits: dict[str, str], tmp_path: Path) -> None:
    """Stopped exactly at the end of epoch 0 on 2 ranks: 1 rank of batch 64 continues with epoch 1."""
    relaid = tmp_path / "relaid"
    _run(2, [*_common(digits, relaid, 32), "--stop-after", "23"])
    doc = read_checkpoint(relaid / "ckpt.json")
    assert doc["epoch_complete"] and (doc["world_size"], doc["epoch"]) == (2, 0)
    _run(1, [*_common(digits, relaid, 64), "--resume"])
    m = _metrics(relaid)
    assert m["world_size"] == 1 and [e["epoch"] for e in m["epochs"]] == list(range(1, 10))
    assert m["test_acc"] >= 0.93


def test_help_and_bad_arguments() -> None:
    ok = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "torchrun" in ok.stdout and "--resume" in ok.stdout
    cmd = [sys.executable, str(TOOL), "--data", "x", "--scores", "y", "--resume"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--resume needs --checkpoint" in bad.stderr


@pytest.mark.slow
def test_s3_dataset_scores_and_checkpoint(s3_server: Any, tmp_path: Path) -> None:
    """Data, score store, checkpoint and weights on a real S3 server (moto on 127.0.0.1); stop and resume."""
    from shardprune.format.writer import DatasetWriter
    from shardprune.sources.builtin import digits_source

    root = s3_server.url()
    opts = s3_server.storage_options
    DatasetWriter(f"{root}/train", shard_format="zarr", max_samples=500, storage_options=opts).write(
        digits_source("train", num_samples=600)
    )

    def args(run: str) -> list[str]:
        return [
            "--data", f"{root}/train", "--model", "mlp", "--input-scale", "0.0625", "--epochs", "4",
            "--batch-size", "32", "--scores", f"{root}/{run}/scores", "--checkpoint", f"{root}/{run}/ckpt.json",
            "--endpoint-url", s3_server.endpoint_url, "--metrics-out", str(tmp_path / f"{run}.json"),
        ]  # fmt: skip

    _run(2, args("whole"))
    _run(2, [*args("sliced"), "--stop-after", "13"])
    _run(2, [*args("sliced"), "--resume"])
    whole = json.loads((tmp_path / "whole.json").read_text())
    sliced = json.loads((tmp_path / "sliced.json").read_text())
    assert sliced["scores_fingerprint"] == whole["scores_fingerprint"]
    assert whole["epochs"][0]["visits"] == 600
