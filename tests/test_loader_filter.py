"""Filters without reads: metadata columns at conversion, expressions, composition with the policy.

Before this change (ac615b0) a manifest could hold no user column and the loader took no
filter: every test here failed with TypeError on the new arguments (seen failing).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shardprune.dataset import ShardedDataset
from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.format.manifest import Manifest
from shardprune.format.writer import DatasetWriter
from shardprune.loader import StreamingLoader
from shardprune.loader.filter import decide_filtered, evaluate, filter_ids
from shardprune.policies import make_policy
from shardprune.sources.base import ArraySource
from shardprune.sources.imagefolder import ImageFolderSource
from shardprune.sources.parquet import ParquetSource
from loader_data import SeenStore, seen_snapshot

N = 120


def width_and_tag(sample_id: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Module-level metadata function (picklable for converter workers)."""
    row: dict[str, Any] = {"width": int(64 * (1 + sample_id % 5)), "tag": "even" if sample_id % 2 == 0 else "odd"}
    if sample_id % 7 != 0:
        row["score"] = sample_id / 10
    return row


def _write(out: Path, workers: int = 1) -> ArraySource:
    x = np.zeros((N, 4), dtype=np.float32)
    x[:, 0] = np.arange(N)
    src = ArraySource(x, np.arange(N) % 12, num_classes=12)
    # Input order kept: the tests below relate ids to the input's labels.
    DatasetWriter(out, max_samples=16, workers=workers, metadata=width_and_tag, keep_order=True).write(src)
    return src


def test_metadata_callable_columns_are_in_the_manifest_for_any_worker_count(tmp_path: Path) -> None:
    _write(tmp_path / "one")
    _write(tmp_path / "two", workers=2)
    assert (tmp_path / "one" / "manifest.arrow").read_bytes() == (tmp_path / "two" / "manifest.arrow").read_bytes()
    meta = ShardedDataset(tmp_path / "one").manifest.metadata
    assert sorted(meta) == ["score", "tag", "width"]
    assert meta["width"].type == pa.int64() and meta["tag"].type == pa.string() and meta["score"].type == pa.float64()
    assert meta["width"].to_pylist() == [64 * (1 + i % 5) for i in range(N)]
    assert meta["score"].to_pylist() == [None if i % 7 == 0 else i / 10 for i in range(N)]


def test_manifest_without_metadata_is_byte_identical_to_before() -> None:
    cols = dict(shard=np.zeros(3), offset=np.arange(3), length=np.ones(3), label=np.zeros(3), crc32=np.zeros(3))
    plain = Manifest.from_columns(**cols).to_bytes()
    assert Manifest.from_bytes(plain).metadata == {}
    with_meta = Manifest.from_columns(**cols, metadata={"b": [1, 2, 3], "a": ["x", None, "z"]})
    back = Manifest.from_bytes(with_meta.to_bytes())
    assert list(back.metadata) == ["a", "b"] and back.metadata["a"].to_pylist() == ["x", None, "z"]


@pytest.mark.parametrize("name", ["label", "2x", "class", "a-b"])
def test_metadata_column_names_must_be_identifiers_other_than_fixed_columns(name: str) -> None:
    cols = dict(shard=np.zeros(1), offset=np.zeros(1), length=np.ones(1), label=np.zeros(1), crc32=np.zeros(1))
    with pytest.raises(ConfigError, match=f"column name {name!r} must be a Python identifier"):
        Manifest.from_columns(**cols, metadata={name: [1]})


def test_parquet_columns_and_image_paths_become_metadata(tmp_path: Path) -> None:
    def png(v: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.full((2, 2), v, dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    table = pa.table({"image": [png(i) for i in range(6)], "label": [0, 1] * 3, "width": [10, 300, 20, 400, 30, 500]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=4)
    widths = [10, 300, 20, 400, 30, 500]
    DatasetWriter(tmp_path / "pq", keep_order=True).write(
        ParquetSource(tmp_path / "t.parquet", metadata_columns=["width"])
    )
    assert ShardedDataset(tmp_path / "pq").manifest.metadata["width"].to_pylist() == widths
    # Shuffled by the converter (the default), each sample's metadata moves with it.
    DatasetWriter(tmp_path / "pqs").write(ParquetSource(tmp_path / "t.parquet", metadata_columns=["width"]))
    shuffled = ShardedDataset(tmp_path / "pqs")
    m = shuffled.manifest
    by_png = {png(v): v for v in range(6)}
    origin = []
    for i in range(6):
        shard = (tmp_path / "pqs" / shuffled.shard_path(int(m.shard[i]))).read_bytes()
        sample = shuffled.decode(i, shard[int(m.offset[i]) : int(m.offset[i]) + int(m.length[i])])
        (v,) = [by_png[b] for b in sample.values() if isinstance(b, bytes) and b in by_png]
        origin.append(v)
    assert sorted(origin) == list(range(6)) and origin != list(range(6))
    assert m.metadata["width"].to_pylist() == [widths[v] for v in origin]
    for cls in ("cat", "dog"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for j, origin in enumerate(("web", "scan", "web")):
            (tmp_path / "img" / cls / f"{origin}_{j}.png").write_bytes(png(j))
    src = ImageFolderSource(tmp_path / "img", path_column="path", path_pattern=r"(?P<origin>[a-z]+)_(?P<num>\d+)")
    DatasetWriter(tmp_path / "if", keep_order=True).write(src)
    meta = ShardedDataset(tmp_path / "if").manifest.metadata
    assert meta["path"].to_pylist() == ["cat/scan_1.png", "cat/web_0.png", "cat/web_2.png"] + [
        "dog/scan_1.png", "dog/web_0.png", "dog/web_2.png"
    ]
    assert meta["origin"].to_pylist() == ["scan", "web", "web"] * 2 and meta["num"].to_pylist() == [1, 0, 2] * 2


def test_expression_masks_are_exact_and_null_is_false() -> None:
    cols = {
        "width": pa.array([100, 256, 300, None, 512]),
        "label": pa.array([1, 12, 3, 4, 9]),
        "tag": pa.array(["a", "b", None, "a", "c"]),
    }
    assert evaluate("width >= 256 and label < 10", cols).tolist() == [False, False, True, False, True]
    assert evaluate("not width >= 256", cols).tolist() == [True, False, False, False, False]
    assert evaluate("tag in ['a', 'c'] or width is None", cols).tolist() == [True, False, False, True, True]
    assert evaluate("100 < width < 512", cols).tolist() == [False, True, True, False, False]
    assert evaluate("width // 100 % 2 == 1 and tag is not None", cols).tolist() == [True, False, False, False, True]
    assert evaluate("label * 2 - 1 > 10", cols).tolist() == [False, True, False, False, True]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os').system('true')", "unsupported expression"),
        ("width.bit_length() > 3", "unsupported expression"),
        ("height > 3", "names column 'height', which the manifest does not have; columns: \\['label', 'width'\\]"),
        ("width +", "is not an expression"),
        ("width", "this is int64, not a condition"),
        ("width in [label]", "must hold literals"),
    ],
)
def test_expression_refuses_anything_but_the_grammar(expr: str, message: str) -> None:
    cols = {"width": pa.array([1, 2]), "label": pa.array([0, 1])}
    with pytest.raises(ConfigError, match=message):
        evaluate(expr, cols)


def _loader(root: Path, **kw: Any) -> StreamingLoader:
    args: dict[str, Any] = dict(batch_size=8, num_epochs=4, seed=3, shuffle_buffer=16)
    args.update(kw)
    return StreamingLoader(ShardedDataset(root), **args)


def test_filtered_samples_are_never_read_even_when_their_bytes_are_garbage(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    ds = ShardedDataset(tmp_path / "ds")
    wanted = [i for i in range(N) if 64 * (1 + i % 5) >= 192 and i % 12 < 10]
    # Overwrite every filtered-out sample's bytes: one read of them would fail its CRC32.
    m = ds.manifest
    for i in sorted(set(range(N)) - set(wanted)):
        path = tmp_path / "ds" / ds.shard_path(int(m.shard[i]))
        with open(path, "r+b") as f:
            f.seek(int(m.offset[i]))
            f.write(b"\xff" * int(m.length[i]))
    loader = _loader(tmp_path / "ds", filter="width >= 192 and label < 10", drop_last=False)
    loader.set_epoch(0)
    got = [int(i) for b in loader for i, w in zip(b["ids"], b["weights"]) if w > 0]
    assert sorted(got) == wanted
    stats = loader.epoch_stats
    assert stats.samples_skipped == N - len(wanted)
    assert stats.gap_bytes == 0 and stats.bytes_read == int(m.length[wanted].sum())
    assert loader.decision is not None and loader.decision.info["filtered_out"] == N - len(wanted)


def test_a_mask_filter_and_an_expression_filter_give_the_same_batches(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    mask = np.array([64 * (1 + i % 5) >= 192 for i in range(N)])
    a = _loader(tmp_path / "ds", filter="width >= 192", policy="random", store=SeenStore(N))
    b = _loader(tmp_path / "ds", filter=mask, policy="random", store=SeenStore(N))
    for loader in (a, b):
        loader.set_epoch(1)
    assert [x["ids"].tolist() for x in a] == [x["ids"].tolist() for x in b]


def test_policy_statistics_are_over_the_filtered_population() -> None:
    snap = seen_snapshot(N)
    ids = np.flatnonzero(np.arange(N) % 3 == 0)
    info = decide_filtered(make_policy("infobatch", prune_ratio=0.5), snap, ids, 1, 0, 10).info
    assert info["threshold"] == pytest.approx(float(np.mean(snap.loss[ids].astype(np.float64))), rel=1e-12)
    decision = decide_filtered(make_policy("random", prune_ratio=0.5), snap, ids, 1, 0, 10)
    # The budget is round((1 - r) * |filtered|): not eaten by never-read, never-scored samples.
    assert decision.num_kept == round(0.5 * ids.size) and not decision.keep[np.arange(N) % 3 != 0].any()
    assert np.allclose(decision.weights[decision.keep], ids.size / decision.num_kept)
    unfiltered = decide_filtered(make_policy("random", prune_ratio=0.5), snap, None, 1, 0, 10)
    assert unfiltered.num_kept == round(0.5 * N)


def test_filter_resumes_exactly_at_every_batch_and_refuses_another_filter(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    expr = "tag == 'even' or width == 320"
    full = _loader(tmp_path / "ds", filter=expr, policy="random", store=SeenStore(N))
    full.set_epoch(2)
    stream = [b["ids"].tolist() for b in full]
    assert len(stream) >= 4
    for stop in range(len(stream) + 1):
        first = _loader(tmp_path / "ds", filter=expr, policy="random", store=SeenStore(N))
        first.set_epoch(2)
        it = iter(first)
        for _ in range(stop):
            next(it)
        state = first.state_dict()
        first.shutdown()
        second = _loader(tmp_path / "ds", filter=expr, policy="random", store=SeenStore(N))
        second.load_state_dict(state)
        second.set_epoch(2)
        assert [b["ids"].tolist() for b in second] == stream[stop:]
    other = _loader(tmp_path / "ds", filter="tag == 'odd'", policy="random", store=SeenStore(N))
    with pytest.raises(CheckpointMismatchError, match=r"filter: .*'expression': \"tag == 'even' or width == 320\""):
        other.load_state_dict(state)


def test_bad_filters_fail_when_the_loader_is_built(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    ds = ShardedDataset(tmp_path / "ds")
    with pytest.raises(ConfigError, match=r"keeps 0 of 120 samples; loosen it"):
        filter_ids("width > 10000", ds.manifest)
    with pytest.raises(ConfigError, match=r"filter mask has dtype int64 and shape \(3,\); pass a bool array"):
        _loader(tmp_path / "ds", filter=np.array([1, 0, 1]))


def test_indexed_webdataset_json_keys_filter_without_reads(tmp_path: Path) -> None:
    import json

    import webdataset as wds

    from shardprune.__main__ import main as shardprune_main

    widths: dict[int, int | None] = {}
    with wds.TarWriter(str(tmp_path / "part-0.tar")) as tw:
        for i in range(40):
            sample: dict[str, Any] = {"__key__": f"s{i:03d}", "bin": bytes([i]) * 700}
            if i % 5 != 4:
                widths[i] = 128 * (1 + i % 4) if i % 7 else None
                sample["json"] = json.dumps({"width": widths[i], "caption": "x"} if widths[i] else {}).encode()
            tw.write(sample)
    code = shardprune_main(
        ["convert", "index", str(tmp_path), "--label-ext", "", "--json-columns", "width", "--no-progress"]
    )
    assert code == 0
    ds = ShardedDataset(tmp_path)
    assert ds.manifest.metadata["width"].to_pylist() == [widths.get(i) for i in range(40)]
    loader = StreamingLoader(ds, batch_size=4, num_epochs=1, drop_last=False, filter="width >= 256")
    loader.set_epoch(0)
    got = sorted(int(i) for b in loader for i in b["ids"])
    assert got == [i for i, w in widths.items() if w is not None and w >= 256]
    assert loader.epoch_stats.bytes_read == int(ds.manifest.length[got].sum())


def test_take_rows_reorders_every_column_for_a_permuted_source() -> None:
    from shardprune.format.metadata import take_rows

    cols = take_rows({"w": [10, 20, 30], "s": ["a", None, "c"]}, np.array([2, 0, 1]))
    assert cols["w"].to_pylist() == [30, 10, 20] and cols["s"].to_pylist() == ["c", "a", None]
