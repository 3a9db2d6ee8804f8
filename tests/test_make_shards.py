"""tools/make_shards.py and shardprune.convert: every source kind, round trips, every bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from shardprune.convert import convert, convert_builtin, make_source
from shardprune.dataset import ShardedDataset
from shardprune.errors import ConfigError, CorruptSampleError, SourceError
from shardprune.format.header import HEADER_NAME
from shardprune.format.writer import STAGING_NAME, DatasetWriter
from shardprune.sources.safepickle import safe_loads

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "make_shards.py"
_spec = importlib.util.spec_from_file_location("make_shards", TOOL)
assert _spec is not None and _spec.loader is not None
make_shards: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_shards)
COMMANDS = ["imagefolder", "arrays", "cifar", "parquet", "digits", "mnist1d", "index"]


def _image(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (24, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _imagefolder(root: Path, per_class: int = 4) -> list[tuple[bytes, int]]:
    expected = []
    for label, cls in enumerate(["ant", "bee", "cat"]):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            fmt, ext = ("PNG", "png") if i == 1 else ("JPEG", "jpg")
            data = _image(label * 100 + i, fmt)
            (root / cls / f"{i:02d}.{ext}").write_bytes(data)
            expected.append((data, label))
    return expected


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    extra = [] if argv[0] == "--help" else ["--no-progress"] if argv[0] == "index" else ["--no-progress", "--no-shuffle"]
    code = make_shards.main([*argv, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


# -- every sub-command has --help -------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        make_shards.main([command, "--help"])
    assert info.value.code == 0
    assert "usage: make_shards.py " + command in capsys.readouterr().out


def test_top_level_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        make_shards.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    for argv, match in [
        ([], "the following arguments are required: COMMAND"),
        (["zip"], "invalid choice: 'zip'"),
        (["digits"], "required: -o/--output"),
        (["digits", "-o", "x", "--max-bytes", "lots"], "'lots' is not a size"),
        (["digits", "-o", "x", "--workers", "two"], "invalid int value: 'two'"),
        (["arrays", "a.npz", "-o", "x", "--format", "parquet"], "invalid choice: 'parquet'"),
    ]:
        with pytest.raises(SystemExit) as info:
            make_shards.main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and match in err and "--help" in err, err


@pytest.mark.parametrize("script", ["make_shards_bench.py", "score_store_bench.py"])
def test_benchmark_help(script: str) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "usage:" in run.stdout, run.stderr


@pytest.mark.parametrize(
    "text,size", [("4096", 4096), ("64M", 64 * 2**20), ("1.5G", 3 * 2**29), ("256MB", 2**28), ("2KiB", 2048)]
)
def test_byte_size(text: str, size: int) -> None:
    assert make_shards.byte_size(text) == size


# -- source kinds and round trips -------------------------------------------------------
def test_imagefolder_round_trip_and_webdataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = _imagefolder(tmp_path / "in")
    code, out, _ = _cli(capsys, "imagefolder", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--max-samples", "5")
    assert code == 0 and "12 samples in 3 tar shards" in out
    ds = ShardedDataset(tmp_path / "out")
    assert ds.header.num_classes == 3 and ds.header.source["classes"] == ["ant", "bee", "cat"]
    for i, (data, label) in enumerate(expected):
        s = ds.read_sample(i)
        assert s.get("jpg", s.get("png")) == data and s["label"] == label
    shards = [str(tmp_path / "out" / s.path) for s in ds.header.shards]
    got = list(wds.WebDataset(shards, shardshuffle=False))
    assert [(s.get("jpg", s.get("png")), int(s["cls"])) for s in got] == expected


def test_imagefolder_workers_give_identical_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _imagefolder(tmp_path / "in")
    for w in ("1", "2"):
        args = ["imagefolder", str(tmp_path / "in"), "-o", str(tmp_path / w), "--max-bytes", "2K", "--workers", w]
        assert _cli(capsys, *args)[0] == 0
    assert _digest(tmp_path / "1") == _digest(tmp_path / "2")
    assert len(ShardedDataset(tmp_path / "1").header.shards) > 2


def test_imagefolder_reencode(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "in", per_class=2)
    header = convert("imagefolder", tmp_path / "out", root=tmp_path / "in", reencode="png", keep_order=True)
    assert set(header.fields) == {"png", "cls"}
    ds = ShardedDataset(tmp_path / "out")
    original = Image.open(tmp_path / "in" / "ant" / "01.png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ds.read_sample(1)["png"]))), np.asarray(original))


@pytest.mark.parametrize("shard_format", ["tar", "zarr"])
def test_arrays_npz_and_npy(tmp_path: Path, shard_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((25, 3, 4)).astype(np.float32)
    y = rng.integers(0, 7, 25)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    extra = ["--compression", "zstd"] if shard_format == "zarr" else []
    for name, args in [
        ("npz", [str(tmp_path / "d.npz")]),
        ("npy", [str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]),
    ]:
        out = tmp_path / name
        code, _, err = _cli(capsys, "arrays", *args, "-o", str(out), "--format", shard_format, "--max-samples", "8", *extra)
        assert code == 0, err
        ds = ShardedDataset(out)
        assert [s.samples for s in ds.header.shards] == [8, 8, 8, 1]
        for i in range(25):
            s = ds.read_sample(i)
            got = s["x"] if shard_format == "zarr" else np.load(io.BytesIO(s["npy"]), allow_pickle=False)
            np.testing.assert_array_equal(got, x[i])
            assert s["label"] == y[i]
        if shard_format == "tar":
            shards = [str(out / s.path) for s in ds.header.shards]
            got_wds = list(wds.WebDataset(shards, shardshuffle=False))
            assert [int(s["cls"]) for s in got_wds] == y.tolist()
            for i, s in enumerate(got_wds):
                np.testing.assert_array_equal(np.load(io.BytesIO(s["npy"]), allow_pickle=False), x[i])


def _cifar_dir(root: Path, variant: str, protocol: int, n: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    root.mkdir()
    rng = np.random.default_rng(5)
    batches: dict[str, tuple[np.ndarray, list[int]]] = {}
    if variant == "cifar10":
        names, label_key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
        meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": n}
        (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    else:
        names, label_key = ["train", "test"], b"fine_labels"
        meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": []}
        (root / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    for name in names:
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        doc = {b"batch_label": b"x", label_key: labels, b"data": data, b"filenames": [b"f.png"] * n}
        if variant == "cifar100":
            doc[b"coarse_labels"] = [v % 20 for v in labels]
        (root / name).write_bytes(pickle.dumps(doc, protocol=protocol))
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("variant,protocol,shard_format", [("cifar10", 2, "tar"), ("cifar100", 4, "zarr"), ("cifar10", 5, "zarr")])
def test_cifar(tmp_path: Path, variant: str, protocol: int, shard_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    batches = _cifar_dir(tmp_path / "c", variant, protocol)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)] if variant == "cifar10" else [batches["train"]]
    x = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = sum((lab for _, lab in train), [])
    code, _, err = _cli(capsys, "cifar", str(tmp_path / "c"), "-o", str(tmp_path / "out"), "--format", shard_format)
    assert code == 0, err
    ds = ShardedDataset(tmp_path / "out")
    assert ds.header.num_classes == (10 if variant == "cifar10" else 100)
    for i in range(len(y)):
        s = ds.read_sample(i)
        img = s["x"] if shard_format == "zarr" else np.asarray(Image.open(io.BytesIO(s["png"])))
        np.testing.assert_array_equal(img, x[i])
        assert s["label"] == y[i]
    if shard_format == "tar":
        shards = [str(tmp_path / "out" / s.path) for s in ds.header.shards]
        decoded = list(wds.WebDataset(shards, shardshuffle=False).decode("rgb8"))
        assert [int(s["cls"]) for s in decoded] == y
        for i, s in enumerate(decoded):
            np.testing.assert_array_equal(s["png"], x[i])
    if variant == "cifar100":
        coarse = convert("cifar", tmp_path / "coarse", root=tmp_path / "c", label_kind="coarse", shard_format=shard_format, keep_order=True)
        assert coarse.num_classes == 20
        np.testing.assert_array_equal(ShardedDataset(tmp_path / "coarse").labels, np.asarray(y) % 20)
    (tmp_path / "c" / ("data_batch_3" if variant == "cifar10" else "train")).unlink()
    _fails(capsys, "cannot read", "cifar", str(tmp_path / "c"), "-o", str(tmp_path / "broken"))
    test = convert("cifar", tmp_path / "test", root=tmp_path / "c", split="test", tar_encoding="npy", keep_order=True)
    assert test.num_samples == 6
    np.testing.assert_array_equal(
        np.load(io.BytesIO(ShardedDataset(tmp_path / "test").read_sample(5)["npy"])),
        batches["test_batch" if variant == "cifar10" else "test"][0][5].reshape(3, 32, 32).transpose(1, 2, 0),
    )


def test_safe_pickle_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, ("echo pwned",))

    for protocol in (2, 5):
        with pytest.raises(SourceError, match="posix.system|os.system|only uses numpy"):
            safe_loads(pickle.dumps({b"data": Evil()}, protocol=protocol))
    with pytest.raises(SourceError, match="dtype"):
        safe_loads(pickle.dumps(np.array([object()], dtype=object), protocol=2))
    with pytest.raises(SourceError, match="STOP|valid"):
        safe_loads(pickle.dumps({b"a": [1, 2]}, protocol=2)[:-1])
    assert safe_loads(pickle.dumps({b"a": [1, 2.5, None, True, "s"]}, protocol=2)) == {b"a": [1, 2.5, None, True, "s"]}


@pytest.mark.parametrize("struct", [False, True])
def test_parquet(tmp_path: Path, struct: bool, capsys: pytest.CaptureFixture[str]) -> None:
    images = [_image(i, "PNG" if i % 3 == 0 else "JPEG") for i in range(20)]
    labels = [i % 4 for i in range(20)]
    column: Any = [{"bytes": b, "path": None} for b in images] if struct else images
    pq.write_table(pa.table({"img": column, "y": labels}), tmp_path / "t.parquet", row_group_size=6)
    args = ["parquet", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "out"), "--image-column", "img"]
    code, _, err = _cli(capsys, *args, "--label-column", "y", "--max-samples", "7")
    assert code == 0, err
    ds = ShardedDataset(tmp_path / "out")
    for i in range(20):
        s = ds.read_sample(i)
        assert s.get("jpg", s.get("png")) == images[i] and s["label"] == labels[i]


@pytest.mark.parametrize("shard_format", ["tar", "zarr"])
def test_digits(tmp_path: Path, shard_format: str) -> None:
    from sklearn.datasets import load_digits

    train = convert_builtin("digits", tmp_path / "tr", split="train", shard_format=shard_format, keep_order=True)
    test = convert_builtin("digits", tmp_path / "te", split="test", shard_format=shard_format, keep_order=True)
    assert (train.num_samples, test.num_samples) == (1438, 359)
    digits = load_digits()
    is_test = np.arange(len(digits.target)) % 5 == 4
    for out, rows in (("tr", np.flatnonzero(~is_test)), ("te", np.flatnonzero(is_test))):
        ds = ShardedDataset(tmp_path / out)
        assert len(ds) == len(rows)
        for i, row in enumerate(rows):
            s = ds.read_sample(i)
            got = s["x"] if shard_format == "zarr" else np.load(io.BytesIO(s["npy"]))
            np.testing.assert_array_equal(got, digits.images[row].astype(np.uint8))
            assert s["label"] == digits.target[row]


def test_mnist1d_splits_match_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    for split in ("train", "test"):
        args = ["mnist1d", "-o", str(tmp_path / split), "--split", split, "--num-samples", "300", "--format", "zarr"]
        assert _cli(capsys, *args)[0] == 0
    margs = get_dataset_args()
    margs.num_samples = 300
    ref = make_dataset(margs)
    for split, suffix in (("train", ""), ("test", "_test")):
        ds = ShardedDataset(tmp_path / split)
        assert len(ds) == len(ref["y" + suffix])
        assert ds.header.num_classes == 10
        for i in range(len(ds)):
            s = ds.read_sample(i)
            np.testing.assert_array_equal(s["x"], ref["x" + suffix][i].astype(np.float32))
            assert s["label"] == ref["y" + suffix][i]


def test_index_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with wds.TarWriter(str(tmp_path / "a.tar")) as tw:
        for i in range(5):
            tw.write({"__key__": f"s{i}", "jpg": _image(i), "cls": i % 2})
    code, out, _ = _cli(capsys, "index", str(tmp_path))
    assert code == 0 and "5 samples in 1 tar shards" in out
    assert ShardedDataset(tmp_path).read_sample(3)["label"] == 1


def test_index_shardwriter_tars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tars written by webdataset.ShardWriter: indexed in place, read back by range, CRC-checked."""
    rng = np.random.default_rng(9)
    samples: list[dict[str, Any]] = [
        {"__key__": f"img-{i:04d}", "jpg": _image(500 + i), "cls": int(rng.integers(0, 4)), "txt": f"caption {i}"}
        for i in range(23)
    ]
    with wds.ShardWriter(str(tmp_path / "train-%03d.tar"), maxcount=7, verbose=0) as sink:
        for s in samples:
            sink.write(s)
    before = _digest(tmp_path)
    code, out, err = _cli(capsys, "index", str(tmp_path))
    assert code == 0 and "23 samples in 4 tar shards" in out, err
    ds = ShardedDataset(tmp_path)
    assert [s.path for s in ds.header.shards] == [f"train-{i:03d}.tar" for i in range(4)]
    assert ds.header.num_classes == max(s["cls"] for s in samples) + 1
    for i, want in enumerate(samples):
        got = ds.read_sample(i)
        assert got["__key__"] == want["__key__"] and got["label"] == want["cls"]
        assert got["jpg"] == want["jpg"] and got["txt"] == want["txt"].encode()
    after = _digest(tmp_path)
    assert {k: after[k] for k in before} == before  # the tars are untouched
    assert sorted(set(after) - set(before)) == ["manifest.arrow", "shardprune.json"]
    # Re-indexing the same tars is a no-op; WebDataset still reads them as before.
    assert _cli(capsys, "index", str(tmp_path))[0] == 0 and _digest(tmp_path) == after
    assert [s["__key__"] for s in wds.WebDataset(str(tmp_path / "train-{000..003}.tar"), shardshuffle=False)] == [
        s["__key__"] for s in samples
    ]
    victim = 9
    shard = tmp_path / ds.header.shards[int(ds.manifest.shard[victim])].path
    offset = int(ds.manifest.offset[victim])
    data = bytearray(shard.read_bytes())
    data[offset + 700] ^= 0x01  # inside the sample's first member's data
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptSampleError) as info:
        ShardedDataset(tmp_path).read_sample(victim)
    assert f"{shard.name} sample id {victim} at offset {offset}" in str(info.value)


# -- bad input: one line, exit 1, nothing that looks complete ----------------------------
def _fails(capsys: pytest.CaptureFixture[str], match: str, *argv: str) -> None:
    out = Path(argv[argv.index("-o") + 1]) if "-o" in argv else None
    header = out / HEADER_NAME if out is not None else None
    had_header = header is not None and header.exists()
    before = _digest(out) if out is not None and out.is_dir() else {}
    code, _, err = _cli(capsys, *argv)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    if out is not None:
        # Nothing that looks complete: no new header, no staging leftovers, an old dataset untouched.
        assert header is not None and header.exists() == had_header
        assert not (out / STAGING_NAME).exists()
        if had_header:
            assert _digest(out) == before


def test_bad_imagefolder_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    _fails(capsys, "is not a directory", "imagefolder", str(tmp_path / "missing"), "-o", out)
    _imagefolder(tmp_path / "in")
    (tmp_path / "in" / "bee" / "notes.txt").write_text("not an image")
    _fails(capsys, "notes.txt' is not an image", "imagefolder", str(tmp_path / "in"), "-o", out)
    assert not (tmp_path / "out" / "shardprune.json").exists()
    (tmp_path / "in" / "bee" / "notes.txt").unlink()
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "in" / "cat" / "broken.jpg")
    _fails(capsys, "cannot read", "imagefolder", str(tmp_path / "in"), "-o", out)
    (tmp_path / "in" / "cat" / "broken.jpg").unlink()
    _fails(capsys, "workers=0 is outside 1..256", "imagefolder", str(tmp_path / "in"), "-o", out, "--workers", "0")


def test_bad_input_found_by_a_worker_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _imagefolder(tmp_path / "in", per_class=6)
    (tmp_path / "in" / "cat" / "99.jpg").write_bytes(b"GIF8 is not enough")
    args = ["imagefolder", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--max-samples", "2"]
    _fails(capsys, "99.jpg' is not an image", *args, "--workers", "2")
    assert not (tmp_path / "out" / "shards").exists()
    (tmp_path / "in" / "cat" / "99.jpg").unlink()
    assert _cli(capsys, *args, "--workers", "2")[0] == 0
    assert len(ShardedDataset(tmp_path / "out")) == 18


def test_file_removed_after_listing(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "in", per_class=2)
    source = make_source("imagefolder", root=tmp_path / "in")
    (tmp_path / "in" / "bee" / "01.png").unlink()
    with pytest.raises(SourceError, match=r"cannot read .*bee/01\.png.*No such file"):
        DatasetWriter(tmp_path / "out").write(source)
    assert not (tmp_path / "out" / HEADER_NAME).exists()


def test_zarr_needs_arrays(tmp_path: Path) -> None:
    _imagefolder(tmp_path / "in", per_class=1)
    with pytest.raises(ConfigError, match="use --format tar"):
        convert("imagefolder", tmp_path / "out", root=tmp_path / "in", shard_format="zarr")
    with pytest.raises(ConfigError, match="not one of"):
        make_source("folder")


def test_bad_array_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    _fails(capsys, "does not exist", "arrays", str(tmp_path / "nope.npz"), "-o", out)
    np.savez(tmp_path / "len.npz", x=np.zeros((5, 2)), y=np.zeros(4, dtype=int))
    _fails(capsys, "5 samples but 4 labels", "arrays", str(tmp_path / "len.npz"), "-o", out)
    np.savez(tmp_path / "range.npz", x=np.zeros((5, 2)), y=np.array([0, 1, 2, 9, 1]))
    _fails(capsys, "label 9 is out of range 0..2", "arrays", str(tmp_path / "range.npz"), "-o", out, "--num-classes", "3")
    np.savez(tmp_path / "neg.npz", x=np.zeros((2, 2)), y=np.array([0, -1]))
    _fails(capsys, "label -1 is out of range", "arrays", str(tmp_path / "neg.npz"), "-o", out)
    np.save(tmp_path / "obj.npy", np.array([{}, {}], dtype=object), allow_pickle=True)
    _fails(capsys, "without pickles", "arrays", str(tmp_path / "obj.npy"), "-o", out)
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    _fails(capsys, "not a readable .npy", "arrays", str(tmp_path / "garbage.npy"), "-o", out)
    assert not (tmp_path / "out" / "shardprune.json").exists()


def test_bad_parquet_and_cifar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    pq.write_table(pa.table({"image": [b"plain text"], "label": [0]}), tmp_path / "t.parquet")
    _fails(capsys, "has no column 'img'", "parquet", str(tmp_path / "t.parquet"), "-o", out, "--image-column", "img")
    _fails(capsys, "row 0: column 'image' is not an image", "parquet", str(tmp_path / "t.parquet"), "-o", out)
    _fails(capsys, "does not exist", "parquet", str(tmp_path / "none.parquet"), "-o", out)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 but not really")
    _fails(capsys, "not a readable Parquet file", "parquet", str(tmp_path / "bad.parquet"), "-o", out)
    pq.write_table(pa.table({"image": [_image(1), _image(2)], "label": [0, 7]}), tmp_path / "r.parquet")
    _fails(capsys, "label 7 is out of range 0..4", "parquet", str(tmp_path / "r.parquet"), "-o", out, "--num-classes", "5")
    (tmp_path / "c").mkdir()
    _fails(capsys, "neither batches.meta", "cifar", str(tmp_path / "c"), "-o", out)
    (tmp_path / "c" / "batches.meta").write_bytes(b"\x80\x02garbage")
    _fails(capsys, "data_batch_1", "cifar", str(tmp_path / "c"), "-o", out)


def test_output_holding_another_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert _cli(capsys, "digits", "-o", out, "--num-samples", "20")[0] == 0
    before = _digest(tmp_path / "out")
    assert _cli(capsys, "digits", "-o", out, "--num-samples", "20")[0] == 0
    _fails(capsys, "already holds a different dataset", "digits", "-o", out, "--num-samples", "30")
    assert _digest(tmp_path / "out") == before
    assert _cli(capsys, "digits", "-o", out, "--num-samples", "30", "--overwrite")[0] == 0
    assert len(ShardedDataset(out)) == 30


def test_bad_tars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import tarfile

    for name, members, match in [
        ("dup", ["a.jpg", "b.jpg", "a.cls"], "duplicate key"),
        ("dot", ["x.y/a.jpg"], "contains a dot"),
    ]:
        (tmp_path / name).mkdir()
        with tarfile.open(tmp_path / name / "s.tar", "w") as tar:
            for m in members:
                tar.addfile(tarfile.TarInfo(m), io.BytesIO(b""))
        _fails(capsys, match, "index", str(tmp_path / name))


def test_real_process_progress_and_errors(tmp_path: Path) -> None:
    run = [sys.executable, str(TOOL), "digits", "-o", str(tmp_path / "out"), "--num-samples", "50"]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "samples/s" in ok.stderr and "50 samples in 1 tar shards" in ok.stdout
    bad = subprocess.run([*run[:-1], "99999"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "num_samples=99999 is outside 1..1438" in bad.stderr


def test_unusable_object_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credentials for an s3:// output: one line naming the cause and the fix, before any conversion."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = _cli(capsys, "digits", "-o", "s3://no-such-bucket/p", "--endpoint-url", "http://127.0.0.1:9")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "NoCredentialsError" in err and "AWS_ACCESS_KEY_ID" in err
