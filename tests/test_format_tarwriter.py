"""Tar shards: deterministic bytes, self-contained sample ranges, WebDataset compatibility."""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from pathlib import Path

import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from shardprune.errors import SourceError
from shardprune.format.tarsample import parse_sample
from shardprune.format.tarwriter import TarShardWriter, _tarfile_header, member_header, padded_size, sample_key

SAMPLES = [
    {"jpg": b"\xff\xd8\xff" + bytes(range(200)) * 3, "cls": b"3"},
    {"npy": b"x" * 512, "cls": b"0"},
    {"png": b"", "cls": b"12", "json": b"{}"},
]


def _write(path: Path) -> list[tuple[int, int, int]]:
    with open(path, "wb") as f:
        tw = TarShardWriter(f)
        ranges = [tw.add(sample_key(i), s) for i, s in enumerate(SAMPLES)]
        size = tw.finish()
    assert size == os.path.getsize(path)
    return ranges


def test_same_input_same_bytes(tmp_path: Path) -> None:
    _write(tmp_path / "a.tar")
    _write(tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_members_are_deterministic_and_sorted(tmp_path: Path) -> None:
    _write(tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "0000000000.cls", "0000000000.jpg", "0000000001.cls", "0000000001.npy",
        "0000000002.cls", "0000000002.json", "0000000002.png",
    ]  # fmt: skip
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_each_range_is_a_tar_stream_with_its_crc(tmp_path: Path) -> None:
    ranges = _write(tmp_path / "a.tar")
    data = (tmp_path / "a.tar").read_bytes()
    for i, (offset, length, crc) in enumerate(ranges):
        chunk = data[offset : offset + length]
        assert zlib.crc32(chunk) & 0xFFFFFFFF == crc
        key, fields = parse_sample(chunk, "test")
        assert key == sample_key(i)
        assert fields == SAMPLES[i]
        assert length == sum(padded_size(len(v)) for v in SAMPLES[i].values())


def test_webdataset_reads_our_tar_unchanged(tmp_path: Path) -> None:
    _write(tmp_path / "a.tar")
    got = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False))
    assert [s["__key__"] for s in got] == [sample_key(i) for i in range(3)]
    for s, want in zip(got, SAMPLES):
        assert {k: v for k, v in s.items() if not k.startswith("__")} == want


def test_keys_without_dots_are_enforced(tmp_path: Path) -> None:
    tw = TarShardWriter(io.BytesIO())
    with pytest.raises(SourceError, match="contains a dot"):
        tw.add("a.b", {"jpg": b"x"})
    with pytest.raises(SourceError, match="no fields"):
        tw.add("a", {})


def test_header_is_one_ustar_block() -> None:
    assert len(member_header("0000000001.jpg", 10)) == 512
    assert sample_key(42) == "0000000042"


_NAME_CHARS = "abcxyz0123456789._-/"


@settings(max_examples=300, deadline=None)
@given(
    st.text(_NAME_CHARS, min_size=1, max_size=100) | st.text(min_size=1, max_size=40),
    st.sampled_from([0, 1, 511, 512, 513, 8**11 - 1]) | st.integers(0, 8**11 - 1),
)
def test_fast_header_is_byte_identical_to_tarfile(name: str, size: int) -> None:
    """The template-built header equals tarfile's for ASCII names and the fallback for the rest."""
    try:
        want = _tarfile_header(name, size)
    except (ValueError, UnicodeEncodeError):
        return  # a name tarfile cannot store (surrogates, or too long to split): not ours to make
    assert member_header(name, size) == want


def test_member_size_limit() -> None:
    with pytest.raises(SourceError, match=r"outside 0\.\.8589934591"):
        member_header("0000000001.bin", 8**11)
    with pytest.raises(SourceError, match="outside"):
        member_header("0000000001.bin", -1)
