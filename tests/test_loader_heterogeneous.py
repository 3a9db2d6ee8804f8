"""Samples that do not all have the same fields: optional captions, symlinks, mixed image formats.

Each of these failed on 7a1f32c (seen failing before the fix): a bare ``KeyError`` from
``collate`` (which used the first sample's keys) or captions silently dropped for whole
batches; BMP/GIF/TIFF fields delivered as raw bytes; ``.JPG`` a different field from ``.jpg``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from shardprune.dataset import ShardedDataset
from shardprune.errors import ConfigError, CorruptSampleError
from shardprune.format.tarindex import index_tars
from shardprune.format.writer import DatasetWriter
from shardprune.loader import StreamingLoader
from shardprune.loader.collate import MISSING, collate
from shardprune.loader.decode import MergeFields, decode_value, encoding_of
from shardprune.sources.imagefolder import ImageFolderSource
from shardprune.sources.sniff import encoding_of as writer_encoding_of

N = 60


def _captioned(root: Path) -> dict[int, str]:
    """Two tars of N samples; every 10th sample (10%) carries a ``txt`` caption."""
    captions: dict[int, str] = {}
    for part in range(2):
        with wds.TarWriter(str(root / f"part-{part}.tar")) as tw:
            for i in range(part * N // 2, (part + 1) * N // 2):
                sample = {"__key__": f"s{i:04d}", "npy": _npy(i), "cls": str(i % 3).encode()}
                if i % 10 == 3:
                    captions[i] = f"caption {i}"
                    sample["txt"] = captions[i].encode()
                tw.write(sample)
    return captions


def _npy(i: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.full(4, i, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _epoch(ds: ShardedDataset, *, seed: int, shuffle_buffer: int = 1024, **kw: object) -> list[dict[str, object]]:
    loader = StreamingLoader(
        ds, batch_size=10, num_epochs=1, seed=seed, drop_last=False, shuffle_buffer=shuffle_buffer, **kw
    )  # type: ignore[arg-type]
    loader.set_epoch(0)
    return list(loader)


@pytest.mark.parametrize(("seed", "workers"), [(0, 0), (1, 0), (2, 0), (0, 2)])
def test_optional_caption_arrives_per_sample_with_none_where_missing(tmp_path: Path, seed: int, workers: int) -> None:
    captions = _captioned(tmp_path)
    index_tars(tmp_path)
    ds = ShardedDataset(tmp_path)
    seen: dict[int, object] = {}
    for batch in _epoch(ds, seed=seed, num_workers=workers, max_block=4096):
        ids = batch["ids"].tolist()  # type: ignore[attr-defined]
        assert torch.equal(batch["npy"][:, 0], torch.tensor(ids, dtype=torch.float32))  # type: ignore[index]
        txt = batch.get("txt")
        values = txt if isinstance(txt, list) else [MISSING] * len(ids)
        assert len(values) == len(ids)
        seen.update(zip(ids, values))
    assert sorted(seen) == list(range(N))
    assert {i: v for i, v in seen.items() if v is not MISSING} == captions


def test_unshuffled_epoch_delivers_every_caption(tmp_path: Path) -> None:
    captions = _captioned(tmp_path)
    index_tars(tmp_path)
    batches = _epoch(ShardedDataset(tmp_path), seed=0, shuffle_buffer=1, shuffle_window=1, shuffle="window")
    pairs = [(i, t) for b in batches for i, t in zip(b["ids"].tolist(), b["txt"])]  # type: ignore[attr-defined]
    got = {i: t for i, t in pairs if t is not None}
    assert got == captions


def test_fields_contract_names_shard_and_id_of_a_sample_without_the_field(tmp_path: Path) -> None:
    _captioned(tmp_path)
    index_tars(tmp_path)
    with pytest.raises(CorruptSampleError, match=r"part-0\.tar sample id 0 at offset 0 .*no field 'txt'"):
        _epoch(ShardedDataset(tmp_path), seed=0, shuffle_buffer=1, shuffle_window=1, shuffle="window", fields=["npy", "txt"])


def test_symlink_member_leaves_the_field_missing_not_a_keyerror(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for i in range(20):
            for ext, data in (("npy", _npy(i)), ("bin", bytes([i]) * 5)):
                info = tarfile.TarInfo(f"k{i:03d}.{ext}")
                if ext == "bin" and i % 4 == 1:
                    info.type, info.linkname = tarfile.SYMTYPE, "elsewhere.bin"
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    index_tars(tmp_path, label_ext=None)
    for batch in _epoch(ShardedDataset(tmp_path), seed=0):
        for i, value in zip(batch["ids"].tolist(), batch["bin"]):  # type: ignore[attr-defined]
            assert value == (None if i % 4 == 1 else bytes([i]) * 5)


def _image(fmt: str, value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((3, 4, 3), value, dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def test_image_folder_mixing_png_and_bmp(tmp_path: Path) -> None:
    for c in range(2):
        folder = tmp_path / "in" / f"class{c}"
        folder.mkdir(parents=True)
        for j in range(5):
            fmt = "BMP" if j % 2 else "PNG"
            (folder / f"{j}.{fmt.lower()}").write_bytes(_image(fmt, 10 * c + j))
    header = DatasetWriter(tmp_path / "out", keep_order=True).write(ImageFolderSource(tmp_path / "in"))
    assert header.fields["bmp"] == {"encoding": "bmp"}
    ds = ShardedDataset(tmp_path / "out")
    (batch,) = _epoch(ds, seed=0)
    ids = batch["ids"].tolist()  # type: ignore[attr-defined]
    for i, png, bmp in zip(ids, batch["png"], batch["bmp"]):  # type: ignore[call-overload]
        assert (png is None) == bool(i % 5 % 2) and (bmp is None) == (not i % 5 % 2)
        pixels = png if bmp is None else bmp
        assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8
        assert pixels.shape == (3, 3, 4) and int(pixels[0, 0, 0]) == 10 * (i // 5) + i % 5
    (merged,) = _epoch(ds, seed=0, transform=MergeFields(image=("png", "bmp")))
    assert "png" not in merged and "bmp" not in merged
    image = merged["image"]
    assert isinstance(image, torch.Tensor) and image.shape == (10, 3, 3, 4)
    expected = [10 * (i // 5) + i % 5 for i in merged["ids"].tolist()]  # type: ignore[attr-defined]
    assert image[:, 0, 0, 0].tolist() == expected


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "PNG", "PPM"])
def test_every_image_encoding_the_writer_names_decodes_to_pixels(fmt: str) -> None:
    ext = {"TIFF": "tiff"}.get(fmt, fmt.lower())
    enc = writer_encoding_of(ext)
    assert encoding_of(ext, {"encoding": enc}) == encoding_of(ext, None) == enc
    out = decode_value(_image(fmt, 77), enc)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (3, 3, 4)
    assert int(out[0, 0, 0]) == 77


def test_unknown_extension_is_bytes_on_both_sides_and_json_is_parsed() -> None:
    assert writer_encoding_of("xyz") == encoding_of("xyz", None) == "bytes"
    assert decode_value(b"\x00\x01", "bytes") == b"\x00\x01"
    assert decode_value(b"\x00\x01", "raw") == b"\x00\x01"
    assert decode_value(b'{"a": [1, 2]}', encoding_of("json", None)) == {"a": [1, 2]}


def test_uppercase_extension_is_the_lowercase_field_as_in_webdataset(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "a.tar")) as tw:
        for i in range(4):
            ext = "JPG" if i % 2 else "jpg"
            tw.write({"__key__": f"k{i}", ext: _image("JPEG", 100)})
    header = index_tars(tmp_path, label_ext=None)
    assert header.fields == {"jpg": {"encoding": "jpeg"}}
    (batch,) = _epoch(ShardedDataset(tmp_path), seed=0, shuffle_buffer=1)
    assert isinstance(batch["jpg"], torch.Tensor) and batch["jpg"].shape == (4, 3, 3, 4)
    stream = wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False)
    wds_keys = [sorted(k for k in s if not k.startswith("__")) for s in stream]
    assert wds_keys == [["jpg"]] * 4


def test_two_members_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        for name in ("k0.jpg", "k0.JPG"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="two members with extension 'jpg'"):
        index_tars(tmp_path, label_ext=None)


def test_collate_takes_every_sample_s_keys_not_the_first_s() -> None:
    batch = collate([{"id": 0, "x": 1}, {"id": 1, "x": 2, "txt": "a"}, {"id": 2, "x": 3}])
    assert batch["ids"].tolist() == [0, 1, 2]
    assert batch["x"].tolist() == [1, 2, 3]
    assert batch["txt"] == [None, "a", None]


def test_merge_fields_refuses_an_empty_target() -> None:
    with pytest.raises(ConfigError, match=r"MergeFields\(image=\(\)\) needs a non-empty tuple"):
        MergeFields(image=())
