"""Parse one sample's bytes from a tar shard: a run of adjacent tar members.

A WebDataset sample is the members ``KEY.EXT`` that share ``KEY`` (the path up to the
first dot of the base name) and sit next to each other in the tar. The manifest's byte
range for a sample covers exactly those members, headers included, so the range is a
small tar stream of its own.
"""

from __future__ import annotations

import io
import tarfile

from shardprune.errors import CorruptSampleError

BLOCK = 512


def split_key(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) the way WebDataset does.

    ``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``). The key is everything up to the
    first dot of the base name.
    """
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def member_end(info: tarfile.TarInfo) -> int:
    """Byte offset just past a member's padded data."""
    return info.offset_data + -(-info.size // BLOCK) * BLOCK


def parse_sample(data: bytes, where: str) -> tuple[str, dict[str, bytes]]:
    """Return ``(key, {extension: bytes})`` of the tar members in ``data``.

    Args:
        data: The sample's bytes as the manifest delimits them.
        where: Text naming shard, sample id and offset, used in error messages.

    Raises:
        CorruptSampleError: the bytes are not tar members of one key.
    """
    fields: dict[str, bytes] = {}
    key: str | None = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = split_key(info.name)
                if key is None:
                    key = k
                elif k != key:
                    raise CorruptSampleError(f"{where}: members of two keys {key!r} and {k!r} in one sample")
                f = tar.extractfile(info)
                if f is None:  # pragma: no cover - regular files always have a file object
                    raise CorruptSampleError(f"{where}: member {info.name!r} has no data")
                fields[ext] = f.read()
    except tarfile.TarError as exc:
        raise CorruptSampleError(f"{where}: not a tar member ({exc})") from exc
    if key is None:
        raise CorruptSampleError(f"{where}: no tar member found in the sample's byte range")
    return key, fields
