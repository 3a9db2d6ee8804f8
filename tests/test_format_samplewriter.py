"""DatasetWriter(...).samples(): write arbitrary Python samples one by one, ShardWriter-style.

Seen failing on ac615b0: there was no way to write samples that are not a folder, a table
or arrays (AttributeError: 'DatasetWriter' object has no attribute 'samples').
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from shardprune.dataset import ShardedDataset
from shardprune.errors import ConfigError, SourceError
from shardprune.format.header import HEADER_NAME
from shardprune.format.writer import DatasetWriter
from shardprune.loader import StreamingLoader


def _png(v: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((2, 3), v, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _samples(n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        s: dict[str, object] = {"png": _png(i), "npy": np.arange(3, dtype=np.int16) + i, "label": i % 4}
        if i % 3 == 0:
            s["txt"] = f"caption {i}"
            s["json"] = {"i": i, "tags": ["a"]}
        out.append(s)
    return out


def test_written_samples_read_back_through_the_loader_and_webdataset(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "ds", max_samples=4).samples() as sink:
        ids = [sink.write(s, metadata={"bright": i * 10}) for i, s in enumerate(_samples(10))]
    assert ids == list(range(10)) and sink.header is not None
    ds = ShardedDataset(tmp_path / "ds")
    assert [s.samples for s in ds.header.shards] == [4, 4, 2] and ds.header.num_classes == 4
    assert ds.header.fields == {
        "cls": {"encoding": "int"}, "json": {"encoding": "json"}, "npy": {"encoding": "npy"},
        "png": {"encoding": "png"}, "txt": {"encoding": "text"},
    }
    assert ds.labels.tolist() == [i % 4 for i in range(10)]
    assert ds.manifest.metadata["bright"].to_pylist() == [i * 10 for i in range(10)]
    loader = StreamingLoader(ds, batch_size=10, num_epochs=1, filter="bright >= 30", drop_last=False)
    loader.set_epoch(0)
    (batch,) = list(loader)
    order = batch["ids"].tolist()
    assert sorted(order) == list(range(3, 10))
    assert batch["png"][:, 0, 0, 0].tolist() == order
    assert batch["npy"].tolist() == [[i, i + 1, i + 2] for i in order]
    assert batch["txt"] == [f"caption {i}" if i % 3 == 0 else None for i in order]
    assert batch["json"] == [{"i": i, "tags": ["a"]} if i % 3 == 0 else None for i in order]
    stream = wds.WebDataset(str(tmp_path / "ds" / "shards" / "000000.tar"), shardshuffle=False)
    assert [s["cls"] for s in stream] == [b"0", b"1", b"2", b"3"]


def test_an_exception_in_the_block_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(tmp_path / "ds").samples() as sink:
            sink.write({"txt": "a"})
            raise RuntimeError("boom")
    assert not (tmp_path / "ds" / HEADER_NAME).exists()
    assert list((tmp_path / "ds").iterdir()) == []


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ({"jpg": np.zeros((2, 2), dtype=np.uint8)}, "field 'jpg' holds a uint8 ndarray; arrays are written as .npy"),
        ({"txt": 1.5}, "field 'txt' holds float; a field is bytes, str, int"),
        ({"JPG": b"x"}, "field name 'JPG' must be a lowercase tar extension"),
        ({"label": 3}, "sample 0 has no fields"),
        ({"label": "cat", "txt": "a"}, "sample 0: label='cat' must be an int >= 0; give the class index"),
        ({"label": 1, "cls": 1}, "has both 'label' and a 'cls' field"),
    ],
)
def test_bad_samples_name_the_sample_and_the_fix(tmp_path: Path, sample: dict[str, object], message: str) -> None:
    sink = DatasetWriter(tmp_path / "ds").samples()
    with pytest.raises(SourceError, match=message):
        sink.write(sample)
    sink.abort()
    with pytest.raises(ConfigError, match="is closed"):
        sink.write({"txt": "a"})


def test_labels_on_some_samples_only_are_refused_at_close(tmp_path: Path) -> None:
    sink = DatasetWriter(tmp_path / "ds").samples()
    sink.write({"txt": "a", "label": 0})
    sink.write({"txt": "b"})
    with pytest.raises(SourceError, match="sample 1 has no label while sample 0 has; label every sample or none"):
        sink.close()
    assert not (tmp_path / "ds" / HEADER_NAME).exists()


def test_samples_straight_to_s3_match_a_local_write(tmp_path: Path, s3_server: object) -> None:
    opts = s3_server.storage_options  # type: ignore[attr-defined]
    url = s3_server.url()  # type: ignore[attr-defined]
    for out, options in ((str(tmp_path / "local"), None), (url, opts)):
        with DatasetWriter(out, max_samples=3, storage_options=options).samples() as sink:
            for i, s in enumerate(_samples(7)):
                sink.write(s, metadata={"bright": i})
    local, remote = ShardedDataset(tmp_path / "local"), ShardedDataset(url, opts)
    assert remote.header == local.header and len(remote.header.shards) == 3
    for i in range(7):
        assert remote.read_raw(i) == local.read_raw(i)
