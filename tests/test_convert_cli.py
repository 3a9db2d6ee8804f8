"""``shardprune convert``: the converter as a console subcommand (tools/make_shards.py shares its code).

Seen failing on ac615b0: ``python -m shardprune convert`` was "invalid choice: 'convert'"
(tools/ is not in the wheel, so a pip user had no converter).
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from shardprune.__main__ import main as shardprune_main
from shardprune.dataset import ShardedDataset

REPO = Path(__file__).resolve().parents[1]


def test_console_subcommand_and_tool_write_the_same_dataset(tmp_path: Path) -> None:
    env_cmd = [sys.executable, "-m", "shardprune", "convert", "digits", "--num-samples", "60", "--no-progress"]
    a = subprocess.run([*env_cmd, "-o", str(tmp_path / "a")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert a.returncode == 0, a.stderr
    assert "60 samples in 1 tar shards" in a.stdout
    tool = [sys.executable, str(REPO / "tools" / "make_shards.py"), "digits", "--num-samples", "60", "--no-progress"]
    b = subprocess.run([*tool, "-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert b.returncode == 0, b.stderr
    assert (tmp_path / "a" / "manifest.arrow").read_bytes() == (tmp_path / "b" / "manifest.arrow").read_bytes()


def test_help_lists_convert_and_errors_are_one_line_under_its_name() -> None:
    run = subprocess.run([sys.executable, "-m", "shardprune", "--help"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and "convert" in run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "shardprune", "convert", "imagefolder", "/nonexistent", "-o", "/tmp/x", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("shardprune convert imagefolder: error: ImageFolder root '/nonexistent'")


def _png(v: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((2, 2), v, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_metadata_options_of_parquet_and_imagefolder(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"image": [_png(i) for i in range(4)], "label": [0, 1, 0, 1], "w": [5, 6, 7, 8]}), tmp_path / "t.pq"
    )
    code = shardprune_main(
        ["convert", "parquet", str(tmp_path / "t.pq"), "-o", str(tmp_path / "pq"), "--metadata-columns", "w",
         "--no-shuffle", "--no-progress"]
    )
    assert code == 0
    assert ShardedDataset(tmp_path / "pq").manifest.metadata["w"].to_pylist() == [5, 6, 7, 8]
    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        (tmp_path / "img" / cls / "x_1.png").write_bytes(_png(1))
    code = shardprune_main(
        ["convert", "imagefolder", str(tmp_path / "img"), "-o", str(tmp_path / "if"), "--path-column", "path",
         "--path-pattern", r"(?P<cls>[a-z])/x_(?P<n>\d)", "--no-progress"]
    )
    assert code == 0
    manifest = ShardedDataset(tmp_path / "if").manifest
    meta = manifest.metadata
    # Shuffled by default: each row's path stays with its own sample (class a is label 0).
    assert sorted(meta["path"].to_pylist()) == ["a/x_1.png", "b/x_1.png"]
    assert [{"a": 0, "b": 1}[c] for c in meta["cls"].to_pylist()] == manifest.label.tolist()
    assert [p[0] for p in meta["path"].to_pylist()] == meta["cls"].to_pylist() and meta["n"].to_pylist() == [1, 1]
