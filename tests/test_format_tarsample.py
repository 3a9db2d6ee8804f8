"""Parsing one sample's tar bytes: the direct ustar path and the tarfile fallback agree."""

from __future__ import annotations

import io
import tarfile

import pytest

from shardprune.errors import CorruptSampleError
from shardprune.format.tarsample import _ustar_members, parse_sample


def _sample(key: str, fields: dict[str, bytes], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ext, value in fields.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(value)
            tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


FIELDS = {"jpg": bytes(range(256)) * 7, "cls": b"3", "json": b'{"a": 1}'}


@pytest.mark.parametrize(
    ("fmt", "key"),
    [
        (tarfile.USTAR_FORMAT, "0000000042"),
        (tarfile.USTAR_FORMAT, "train/n01440764/" + "k" * 90),  # ustar prefix + name fields
        (tarfile.GNU_FORMAT, "0000000042"),
        (tarfile.GNU_FORMAT, "k" * 150),  # GNU long-name header
        (tarfile.PAX_FORMAT, "0000000042"),
        (tarfile.PAX_FORMAT, "k" * 150),  # pax extended header
    ],
)
def test_parse_sample_same_for_every_tar_flavour(fmt: int, key: str) -> None:
    got_key, got = parse_sample(_sample(key, FIELDS, fmt), "shard-000.tar@0")
    assert got_key == key
    assert got == FIELDS


def test_plain_ustar_takes_the_fast_path_and_long_names_fall_back() -> None:
    assert _ustar_members(_sample("0000000001", FIELDS, tarfile.USTAR_FORMAT), "w") is not None
    assert _ustar_members(_sample("x" * 150, FIELDS, tarfile.GNU_FORMAT), "w") is None
    assert _ustar_members(_sample("x" * 150, FIELDS, tarfile.PAX_FORMAT), "w") is None


def test_truncated_member_names_the_place() -> None:
    data = _sample("0000000007", FIELDS, tarfile.USTAR_FORMAT)
    with pytest.raises(CorruptSampleError, match="shard-003.tar@1536"):
        parse_sample(data[:700], "shard-003.tar@1536")


def test_bad_size_field_names_the_place() -> None:
    data = bytearray(_sample("0000000007", FIELDS, tarfile.USTAR_FORMAT))
    data[124:136] = b"zzzzzzzzzzz\0"
    with pytest.raises(CorruptSampleError, match="shard-000.tar@0"):
        parse_sample(bytes(data), "shard-000.tar@0")


def test_two_keys_in_one_range_is_corrupt() -> None:
    data = _sample("0000000001", {"cls": b"1"}, tarfile.USTAR_FORMAT)[:1024]
    data += _sample("0000000002", {"cls": b"2"}, tarfile.USTAR_FORMAT)
    with pytest.raises(CorruptSampleError, match="two keys"):
        parse_sample(data, "s@0")
