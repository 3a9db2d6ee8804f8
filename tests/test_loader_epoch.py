"""One epoch through StreamingLoader on local shards: ids, order, bytes, stats, decode, errors.

Worker tests start real worker processes (forkserver, the default).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loader_data import N, FixedKeep, SeenStore, as_float, epoch_ids, write_dataset, write_mixed_tars
from shardprune.dataset import open_dataset
from shardprune.dist.world import World
from shardprune.errors import CheckpointMismatchError, ConfigError, CorruptSampleError, DistributedError
from shardprune.format.tarindex import index_tars
from shardprune.loader import StreamingLoader, summarize
from shardprune.loader.failure import WorkerTraceback
from shardprune.policies import make_policy


@pytest.fixture(scope="module")
def tar_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader") / "tar"
    write_dataset(root)
    return root


def _loader(root: Path, **kw: Any) -> StreamingLoader:
    args: dict[str, Any] = dict(batch_size=16, num_epochs=3, seed=0, shuffle_buffer=32)
    args.update(kw)
    return StreamingLoader(root, **args)


def _collect(loader: StreamingLoader) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {"ids": [], "weights": [], "npy": [], "label": [], "pid": []}
    for batch in loader:
        parts["ids"].append(batch["ids"].numpy())
        parts["weights"].append(batch["weights"].numpy())
        parts["npy"].append(batch["npy"].numpy())
        parts["label"].append(batch["label"].numpy())
        if "seen_by_pid" in batch:
            parts["pid"].append(batch["seen_by_pid"].numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


# Golden: the first ids of epoch 0 of the standard dataset (seed 0, batch 16, buffer 32), by
# shuffle mode; "global" is the local default (its order changed deliberately with issue 12).
GOLDEN_EPOCH0 = [115, 230, 281, 175, 267, 295, 95, 145, 72, 63]
GOLDEN_EPOCH0_WINDOW = [30, 31, 27, 129, 50, 128, 57, 62, 54, 101]
GOLDEN_EPOCH1 = [148, 267, 94, 48, 279, 63, 295, 5, 47, 154]


@pytest.mark.parametrize("workers", [0, 1, 4])
def test_epoch_ids_equal_the_plan(tar_ds: Path, workers: int) -> None:
    src_labels = open_dataset(tar_ds).labels
    with _loader(tar_ds, policy=make_policy("random", prune_ratio=0.3), store=SeenStore(), num_workers=workers,
                 transform=as_float) as loader:
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            plan = loader.plan
            assert plan is not None
            got = _collect(loader)
            assert got["ids"].tolist() == plan.ids().tolist()
            assert len(set(got["ids"].tolist())) == got["ids"].size  # no duplicates, no drops
            assert np.array_equal(got["weights"], plan.slot_weights[plan.order])
            # Content is the sample's own: column 0 holds the id, labels match the manifest.
            assert np.array_equal(got["npy"][:, 0], got["ids"].astype(np.float32))
            assert np.array_equal(got["label"], src_labels[got["ids"]])
            # The transform ran in the worker processes, not here.
            pids = set(got["pid"].tolist())
            assert (pids == {os.getpid()}) if workers == 0 else (os.getpid() not in pids and 1 <= len(pids) <= workers)
            if epoch == 0:
                # Random pruning at 0.3 with every sample seen keeps round(0.7 N).
                assert loader.epoch_stats.samples_skipped == N - round(0.7 * N)


def test_golden_order_same_across_runs_and_workers(tar_ds: Path) -> None:
    with _loader(tar_ds) as a:
        first = epoch_ids(a)
        assert first[:10] == GOLDEN_EPOCH0
        second = epoch_ids(a)  # iterating again, without set_epoch, serves epoch 1
        assert a.plan is not None and a.plan.epoch == 1
        a.set_epoch(0)
        assert epoch_ids(a) == first  # set_epoch replays an epoch exactly
    # Epoch 1 is a fresh permutation (its own golden ids) of as many distinct samples.
    assert second[:10] == GOLDEN_EPOCH1 and second != first
    assert len(second) == len(set(second)) == len(first) and set(second) <= set(range(N))
    with _loader(tar_ds, num_workers=2) as b:
        assert epoch_ids(b) == first
        b.set_epoch(1)
        assert epoch_ids(b) == second
    # A different seed gives a different order.
    with _loader(tar_ds, seed=1) as c:
        assert epoch_ids(c)[:10] != GOLDEN_EPOCH0
    with _loader(tar_ds, shuffle="window") as d:
        assert epoch_ids(d)[:10] == GOLDEN_EPOCH0_WINDOW


def test_ranks_disjoint_union_is_kept_set(tar_ds: Path) -> None:
    policy = make_policy("random", prune_ratio=0.5)
    for drop_last in (False, True):
        per_rank: list[list[int]] = []
        lengths, pads, trims = [], 0, 0
        kept: set[int] = set()
        for rank in range(3):
            with _loader(tar_ds, policy=policy, store=SeenStore(), world=World(rank, 3), drop_last=drop_last,
                         batch_size=7) as loader:
                loader.set_epoch(1)
                assert loader.decision is not None and loader.plan is not None
                kept = set(np.flatnonzero(loader.decision.keep).tolist())
                batches = list(loader)
                lengths.append(len(batches))
                assert len(loader) == len(batches)
                ids = [int(i) for b in batches for i, w in zip(b["ids"], b["weights"]) if w > 0]
                per_rank.append(ids)
                pads += loader.epoch_stats.padded
                trims += loader.epoch_stats.trimmed
                assert sum(int((b["weights"] == 0).sum()) for b in batches) == loader.epoch_stats.padded
        assert len(set(lengths)) == 1  # every rank the same number of batches
        flat = [i for ids in per_rank for i in ids]
        assert len(flat) == len(set(flat))  # disjoint
        if drop_last:
            assert pads == 0 and len(flat) + trims == len(kept) and set(flat) <= kept
        else:
            assert trims == 0 and set(flat) == kept and pads == (-len(kept)) % 3


def test_len_stats_and_bytes_read_equal_the_plan(tar_ds: Path) -> None:
    ds = open_dataset(tar_ds)
    lengths = np.asarray(ds.manifest.length, dtype=np.int64)
    for drop_last, max_gap, budget in ((True, 0, None), (False, 0, None), (True, 1 << 20, None), (True, 0, 0.3)):
        with _loader(tar_ds, policy=make_policy("random", prune_ratio=0.5), store=SeenStore(), drop_last=drop_last,
                     max_gap=max_gap, gap_budget=budget, batch_size=10) as loader:
            loader.set_epoch(0)
            planned = len(loader)
            summary = summarize(loader.read_units())
            assert loader.decision is not None and loader.plan is not None
            keep = loader.decision.keep
            batches = sum(1 for _ in loader)
            s = loader.epoch_stats
            assert planned == batches == s.batches
            assert s.samples_skipped == N - int(keep.sum()) and s.samples_total == N
            assert s.bytes_not_read == int(lengths[~keep].sum())
            assert (s.bytes_read, s.requests, s.gap_bytes) == (summary.bytes_read, summary.requests, summary.gap_bytes)
            slots = np.unique(loader.plan.order)  # each slot read once, pads included
            assert s.bytes_kept == int(lengths[loader.plan.slot_ids[slots]].sum())
            if budget is not None:
                # Read-through gaps within 30% of the planned bytes, for fewer requests.
                assert 0 < s.gap_bytes <= 0.3 * s.bytes_kept and s.bytes_read == s.bytes_kept + s.gap_bytes
                with _loader(tar_ds, policy=make_policy("random", prune_ratio=0.5), store=SeenStore(),
                             batch_size=10) as plain:
                    plain.set_epoch(0)
                    assert s.requests < summarize(plain.read_units()).requests
            elif max_gap == 0:
                assert s.bytes_read == s.bytes_kept and s.gap_bytes == 0
            else:
                assert s.gap_bytes > 0 and s.bytes_read == s.bytes_kept + s.gap_bytes
                with _loader(tar_ds, policy=make_policy("random", prune_ratio=0.5), store=SeenStore(),
                             batch_size=10) as plain:
                    plain.set_epoch(0)
                    assert s.requests < summarize(plain.read_units()).requests


def _flip(ds_root: Path, sample: int) -> tuple[str, int]:
    ds = open_dataset(ds_root)
    m = ds.manifest
    path = ds.storage.path(ds.shard_path(int(m.shard[sample])))
    offset = int(m.offset[sample])
    with open(path, "r+b") as f:
        f.seek(offset + int(m.length[sample]) - 700)  # inside the .npy payload
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x5A]))
    return path, offset


def test_corrupt_kept_sample_is_named_pruned_one_never_read(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, n=60, per_shard=20)
    keep = np.ones(60, dtype=bool)
    keep[[7, 33]] = False
    _flip(root, 7)  # pruned: its bytes are never read, so the epoch is clean
    with StreamingLoader(root, batch_size=6, num_epochs=1, drop_last=False, policy=FixedKeep(keep)) as loader:
        assert sorted(epoch_ids(loader)) == sorted(set(range(60)) - {7, 33})
    path, offset = _flip(root, 41)
    for workers in (0, 2):
        with StreamingLoader(root, batch_size=6, num_epochs=1, drop_last=False, policy=FixedKeep(keep), num_workers=workers) as loader:
            with pytest.raises(CorruptSampleError) as err:
                epoch_ids(loader)
        msg = str(err.value)
        assert f"shard {path} sample id 41 at offset {offset}" in msg and "CRC32 mismatch" in msg
        # The original error, one line, not a thread's or worker's traceback wrapped around it.
        assert type(err.value) is CorruptSampleError and "\n" not in msg and "Traceback" not in msg
        cause = err.value.__cause__
        if workers:
            # The worker's stack is kept as the cause, naming the process and the failing call.
            assert isinstance(cause, WorkerTraceback)
            assert re.match(r"in loader worker process \d+:\nTraceback", str(cause)) and "verify" in str(cause)
        else:
            assert cause is None


def test_zarr_dataset_epoch(tmp_path: Path) -> None:
    root = tmp_path / "zarr"
    src = write_dataset(root, n=90, per_shard=20, shard_format="zarr")
    with StreamingLoader(root, batch_size=8, num_epochs=1, drop_last=False, num_workers=1) as loader:
        ids: list[int] = []
        for batch in loader:
            x = batch["x"]
            assert x.dtype == torch.float32 and x.shape[1:] == (6,)
            assert torch.equal(x[:, 0], batch["ids"].float())
            assert torch.equal(batch["label"], torch.from_numpy(src.labels[batch["ids"].numpy()]))
            ids.extend(batch["ids"].tolist())
    assert sorted(ids) == list(range(90)) and loader.epoch_stats.bytes_read == loader.epoch_stats.bytes_kept


def test_decode_per_field_type_and_raw(tmp_path: Path) -> None:
    expected = write_mixed_tars(tmp_path / "mixed")
    index_tars(tmp_path / "mixed")
    with StreamingLoader(tmp_path / "mixed", batch_size=4, num_epochs=1, drop_last=False, mixup=False) as loader:
        seen = 0
        for batch in loader:
            for k, i in enumerate(batch["ids"].tolist()):
                e = expected[i]
                jpg = batch["jpg"][k]  # ragged heights: a list of tensors
                assert jpg.dtype == torch.uint8 and tuple(jpg.shape) == (3, e["shape"][0], e["shape"][1])
                assert np.array_equal(batch["png"][k].numpy(), e["gray"][None])
                assert np.array_equal(batch["npy"][k].numpy(), e["npy"])
                assert batch["cls"][k].item() == e["cls"] == batch["label"][k].item()
                assert batch["txt"][k] == e["txt"] and batch["bin"][k] == e["bin"]
                assert batch["__key__"][k] == e["key"]
                seen += 1
        assert seen == len(expected)
    with StreamingLoader(tmp_path / "mixed", batch_size=4, num_epochs=1, decode=False, fields=["png"],
                         mixup=False) as raw:
        batch = next(iter(raw))
        assert set(batch) >= {"png", "ids", "label"} and "jpg" not in batch
        assert isinstance(batch["png"][0], bytes) and batch["png"][0][:4] == b"\x89PNG"


def test_bad_arguments_name_value_and_range(tar_ds: Path) -> None:
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"batch_size": 0}, ConfigError, r"batch_size=0 must be an int >= 1"),
        ({"num_workers": -1}, ConfigError, r"num_workers=-1 must be an int >= 0"),
        ({"num_epochs": 0}, ConfigError, r"num_epochs=0 must be an int >= 1"),
        ({"multiprocessing_context": "fork"}, ConfigError, r"'fork' is not one of \('forkserver', 'spawn'\)"),
        ({"fields": ["nope"]}, ConfigError, r"unknown field\(s\) \['nope'\]; the dataset has \['cls', 'npy'\]"),
        ({"max_gap": -5}, ConfigError, r"max_gap=-5 must be an int >= 0"),
        ({"gap_budget": -0.1}, ConfigError, r"gap_budget=-0.1 must be a finite number in \[0, 10\]"),
        ({"policy": "bogus"}, ConfigError, r"unknown pruning policy 'bogus'; choose one of"),
        ({"store": object()}, ConfigError, r"has no snapshot\(\) method"),
        ({"shuffle_buffer": 0}, ConfigError, r"shuffle_buffer=0 must be an int >= 1"),
        ({"world": "rank0"}, ConfigError, r"world='rank0' must be a shardprune.dist.world.World"),
    ]
    if not torch.cuda.is_available():
        cases.append(({"pin_memory": True}, ConfigError, r"pin_memory=True needs CUDA"))
    for kw, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            _loader(tar_ds, **kw)
    with pytest.raises(DistributedError, match=r"rank=2 is outside 0..1"):
        World(2, 2)
    loader = _loader(tar_ds)
    with pytest.raises(ConfigError, match=r"epoch=-1 must be an int >= 0"):
        loader.set_epoch(-1)
    with pytest.raises(ConfigError, match=r"num_epochs=None, num_steps=None: pass exactly one"):
        _loader(tar_ds, num_epochs=None)
    with pytest.raises(ConfigError, match=r"num_epochs=3, num_steps=5: pass exactly one"):
        _loader(tar_ds, num_steps=5)
    with pytest.raises(ConfigError, match=r"num_steps=0 must be an int >= 1"):
        _loader(tar_ds, num_epochs=None, num_steps=0)
    with pytest.raises(ConfigError, match=r"set_epoch\(1\) on a loader with num_steps=5: step mode"):
        _loader(tar_ds, num_epochs=None, num_steps=5).set_epoch(1)
    with pytest.raises(ConfigError, match=r"no epoch is planned yet; call set_epoch"):
        loader.read_units()
    with pytest.raises(CheckpointMismatchError, match=r"keys"):
        loader.load_state_dict({"epoch": 0})
    # Mixup asked for on a batch with nothing float to blend: a clear error, not a silent no-op.
    swdpp = make_policy("swdpp", prune_ratio=0.5, mixup_prob=1.0)
    with _loader(tar_ds, policy=swdpp, store=SeenStore(), fields=["cls"]) as nothing_float:
        with pytest.raises(ConfigError, match=r"mixup_prob=1.0\) but the batch has no floating-point field"):
            next(iter(nothing_float))
