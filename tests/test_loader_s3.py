"""Epochs from s3:// (a real s3rver server on 127.0.0.1), and faults injected by tests/faultproxy.py."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faultproxy import FaultProxy
from loader_data import SeenStore, as_float, write_dataset
from shardprune import objstore
from shardprune.errors import FetchError
from shardprune.loader import StreamingLoader
from shardprune.policies import make_policy

N = 200


@pytest.fixture(scope="module")
def datasets(s3rver: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    local = tmp_path_factory.mktemp("s3loader") / "ds"
    write_dataset(local, n=N, per_shard=25)
    url = s3rver.url()
    write_dataset(url, n=N, per_shard=25, storage_options=s3rver.storage_options)
    return local, url


def _run(root: Path | str, **kw: Any) -> tuple[list[np.ndarray], dict[str, int]]:
    args: dict[str, Any] = dict(
        batch_size=10, num_epochs=2, seed=4, policy=make_policy("random", prune_ratio=0.5), store=SeenStore(n=N),
        shuffle_buffer=40, drop_last=False, transform=as_float,
        shuffle="window",  # the same order local and remote (their default modes differ)
    )
    args.update(kw)
    with StreamingLoader(root, **args) as loader:
        loader.set_epoch(1)
        out = [np.column_stack([b["ids"].numpy(), b["weights"].numpy(), b["npy"].numpy()]) for b in loader]
        return out, loader.epoch_stats.as_dict()


def test_s3_epoch_equals_local_epoch(datasets: tuple[Path, str], s3rver: Any) -> None:
    local, url = datasets
    want, local_stats = _run(local)
    for workers, max_gap, budget in ((0, 0, 0.0), (2, None, None)):
        got, stats = _run(url, storage_options=s3rver.storage_options, num_workers=workers, max_gap=max_gap,
                          gap_budget=budget)
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        assert stats["samples_skipped"] == local_stats["samples_skipped"] == N // 2
        assert stats["bytes_not_read"] == local_stats["bytes_not_read"]
        if max_gap == 0:
            assert (stats["bytes_read"], stats["requests"]) == (local_stats["bytes_read"], local_stats["requests"])
        else:
            # The remote defaults (max_gap 0, gap budget 0.1 below the break-even gap) read through the
            # smallest pruned gaps up to 10% of the kept bytes, never more: fewer requests, counted gap bytes.
            assert stats["requests"] < local_stats["requests"]
            assert stats["bytes_read"] == stats["bytes_kept"] + stats["gap_bytes"]
            assert 0 < stats["gap_bytes"] <= 0.1 * stats["bytes_kept"]

@pytest.mark.parametrize(
    ("workers", "faults"),
    [
        # 503 and a dropped body: retried by shardprune's one retry layer (s3fs's is off).
        (0, {1: 503, 2: "drop", 5: 503, 6: "drop", 11: "drop"}),
        (0, {1: 500, 3: 503, 4: "drop", 6: 500, 7: 500, 9: "drop", 12: 503}),
        (2, {2: 500, 3: 500, 5: "drop", 8: 503, 10: 500}),
    ],
)
def test_transient_faults_still_yield_every_sample_once(
    datasets: tuple[Path, str], s3rver: Any, workers: int, faults: dict[int, Any]
) -> None:
    local, url = datasets
    want, _ = _run(local)
    with FaultProxy(s3rver.endpoint_url, faults=faults) as proxy:
        got, stats = _run(url, storage_options=s3rver.options_via(proxy.url), num_workers=workers, max_gap=0, gap_budget=0)
    assert [n for n, *_ in proxy.injected] == sorted(faults)  # the faults really happened
    ids = np.concatenate([b[:, 0] for b in got]).astype(int).tolist()
    assert len(ids) == len(set(ids)) == N // 2
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    # Failed attempts are not counted as reads: the stats equal a clean run's.
    assert stats["bytes_read"] == stats["bytes_kept"]


@pytest.mark.parametrize("fault", [503, 500, "drop"])
def test_persistent_failure_names_url_and_range(datasets: tuple[Path, str], s3rver: Any, fault: Any) -> None:
    _, url = datasets
    with FaultProxy(s3rver.endpoint_url, fail_all=fault) as proxy:
        start = time.monotonic()
        with pytest.raises(FetchError) as err:
            _run(url, storage_options=s3rver.options_via(proxy.url), max_gap=0, gap_budget=0)
        elapsed = time.monotonic() - start
    # Raised in the prefetch thread, re-raised here as the same type, the traceback prepended.
    found = re.search(
        rf"reading {url}/(shards/\d+\.tar) bytes \[(\d+), (\d+)\) failed after 6 attempt\(s\)", str(err.value)
    )
    assert found is not None, str(err.value)
    shard, start, stop = found.group(1), int(found.group(2)), int(found.group(3))
    attempts = [p for _, _, p, r in proxy.injected if p.endswith(shard) and r == f"bytes={start}-{stop - 1}"]
    # One retry layer: 6 requests for that range, plus the failed batch read with obstore (target: at most 8),
    # then a clear error (target: within 30 s).
    assert len(attempts) == (7 if objstore.available() else 6) and elapsed < 30


def test_endpoint_and_credentials_from_environment(
    datasets: tuple[Path, str], s3rver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No storage_options: the URL alone, with the endpoint and keys in the standard AWS variables.
    local, url = datasets
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3rver.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3rver.storage_options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3rver.storage_options["secret"])
    want, _ = _run(local)
    got, stats = _run(url, num_workers=1)  # a worker process: the forkserver may predate the variables
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert stats["samples_skipped"] == N // 2


def test_pruned_bytes_never_requested_from_the_server(datasets: tuple[Path, str], s3rver: Any) -> None:
    # Seen at the HTTP level: every byte range the server was asked for lies inside kept samples.
    _, url = datasets
    with FaultProxy(s3rver.endpoint_url) as proxy:
        opts = s3rver.options_via(proxy.url)
        with StreamingLoader(url, batch_size=10, num_epochs=2, seed=4, policy=make_policy("random", prune_ratio=0.5),
                             store=SeenStore(n=N), drop_last=False, storage_options=opts, max_gap=0,
                             gap_budget=0) as loader:
            loader.set_epoch(1)
            assert loader.decision is not None
            keep = loader.decision.keep
            assert sum(len(b["ids"]) for b in loader) == int(keep.sum())
            m = loader.dataset.manifest
            shards = [s.path for s in loader.dataset.header.shards]
    kept_bytes: dict[str, set[int]] = {}
    pruned_bytes: dict[str, set[int]] = {}
    for i in range(N):
        target = kept_bytes if keep[i] else pruned_bytes
        start = int(m.offset[i])
        target.setdefault(shards[int(m.shard[i])], set()).update(range(start, start + int(m.length[i])))
    requested: dict[str, set[int]] = {}
    for path, rng in proxy.ranges:
        first, last = (int(v) for v in rng.removeprefix("bytes=").split("-"))
        shard = next(s for s in shards if path.endswith(s))
        requested.setdefault(shard, set()).update(range(first, last + 1))
    assert requested == kept_bytes  # every kept byte, exactly once in total, nothing else
    assert all(not (requested.get(s, set()) & b) for s, b in pruned_bytes.items())
