"""Write tar shards that ``webdataset.WebDataset`` reads unchanged, byte for byte reproducibly.

Every member gets the same metadata (mtime 0, uid/gid 0, empty user and group names,
mode 0o644) and a sample's members are written adjacent, in sorted extension order,
under the key ``f"{sample_id:010d}"``. Same input, same bytes.

A sample's byte range (what the manifest records) runs from its first member's
header to the end of its last member's padded data, so it parses as a small tar
stream on its own (see :mod:`shardprune.format.tarsample`).
"""

from __future__ import annotations

import tarfile
import zlib
from typing import BinaryIO, Mapping

from shardprune.errors import SourceError
from shardprune.format.tarsample import BLOCK

#: Width of the zero-padded sample id used as the tar key.
KEY_WIDTH = 10
_ZERO_BLOCK = bytes(BLOCK)


def sample_key(sample_id: int) -> str:
    """The tar key of a global sample id: zero-padded decimal, no dots."""
    return f"{sample_id:0{KEY_WIDTH}d}"


def member_header(name: str, size: int) -> bytes:
    """A deterministic ustar header block for a regular file member."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def padded_size(size: int) -> int:
    """Bytes a member of ``size`` data bytes takes in a tar, header included."""
    return BLOCK + -(-size // BLOCK) * BLOCK


class TarShardWriter:
    """Append samples to one tar file and report each sample's byte range and CRC32.

    Args:
        f: A binary file opened for writing at position 0.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.position = 0

    def add(self, key: str, fields: Mapping[str, bytes]) -> tuple[int, int, int]:
        """Write one sample's members; return ``(offset, length, crc32)`` of its bytes.

        Args:
            key: The sample key; must not contain a dot (WebDataset splits at the first dot).
            fields: Extension -> member bytes; written in sorted extension order.

        Raises:
            SourceError: the key contains a dot or there are no fields.
        """
        if "." in key or not key:
            raise SourceError(f"tar key {key!r} is empty or contains a dot; WebDataset keys must not")
        if not fields:
            raise SourceError(f"sample {key!r} has no fields to write")
        parts: list[bytes] = []
        for ext in sorted(fields):
            data = fields[ext]
            parts.append(member_header(f"{key}.{ext}", len(data)))
            parts.append(data)
            pad = -len(data) % BLOCK
            if pad:
                parts.append(_ZERO_BLOCK[:pad])
        crc = 0
        length = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
            length += len(part)
            self._f.write(part)
        offset = self.position
        self.position += length
        return offset, length, crc & 0xFFFFFFFF

    def finish(self) -> int:
        """Write the end-of-archive marker (two zero blocks); return the file size."""
        self._f.write(_ZERO_BLOCK * 2)
        self.position += 2 * BLOCK
        return self.position
