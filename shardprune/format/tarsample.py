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
from shardprune.format.encodings import normalize_ext

BLOCK = 512


def split_key(name: str) -> tuple[str, str]:
    """Split a member name into (key, extension) the way WebDataset does.

    ``dir/abc.seg.PNG`` -> (``dir/abc``, ``seg.png``). The key is everything up to the
    first dot of the base name; the extension is lowercased, as WebDataset's
    ``group_by_keys`` does, so ``a.JPG`` and ``b.jpg`` are the same field.
    """
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], normalize_ext(name[dot + 1 :])


def member_end(info: tarfile.TarInfo) -> int:
    """Byte offset just past a member's padded data."""
    return info.offset_data + -(-info.size // BLOCK) * BLOCK


_ZERO_BLOCK = bytes(BLOCK)
#: Type flags of regular files; of members whose name or size lives in another header
#: (GNU long names, pax headers), left to ``tarfile``.
_REGULAR = frozenset({b"0", b"\0", b"7"})
_EXTENDED = frozenset({b"L", b"K", b"x", b"g"})


def _ustar_members(data: bytes, where: str) -> list[tuple[str, bytes]] | None:
    """The ``(name, bytes)`` of the regular members of a plain ustar stream, or None.

    A direct read of the 512-byte headers (name, prefix, octal size, type flag), about
    ten times faster than ``tarfile`` per sample; header checksums are not checked, as
    the sample's CRC32 was. None for anything ``tarfile`` must handle (pax or GNU long
    name headers, base-256 sizes).
    """
    out: list[tuple[str, bytes]] = []
    pos, n = 0, len(data)
    view = memoryview(data)
    while pos + BLOCK <= n:
        header = bytes(view[pos : pos + BLOCK])
        if header == _ZERO_BLOCK:
            break
        flag = header[156:157]
        if flag in _EXTENDED or header[124] & 0x80:
            return None
        raw_size = header[124:136].split(b"\0", 1)[0].strip()
        try:
            size = int(raw_size, 8) if raw_size else 0
        except ValueError:
            raise CorruptSampleError(f"{where}: not a tar member (bad size field {raw_size!r})") from None
        name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        start = pos + BLOCK
        if start + size > n:
            raise CorruptSampleError(f"{where}: not a tar member (member {name!r} runs past the sample's range)")
        if flag in _REGULAR:
            out.append((name.decode("utf-8", "surrogateescape"), bytes(view[start : start + size])))
        pos = start + -(-size // BLOCK) * BLOCK
    return out


def parse_sample(data: bytes, where: str) -> tuple[str, dict[str, bytes]]:
    """Return ``(key, {extension: bytes})`` of the tar members in ``data``.

    Args:
        data: The sample's bytes as the manifest delimits them.
        where: Text naming shard, sample id and offset, used in error messages.

    Raises:
        CorruptSampleError: the bytes are not tar members of one key.
    """
    members = _ustar_members(data, where)
    if members is None:
        members = _tarfile_members(data, where)
    fields: dict[str, bytes] = {}
    key: str | None = None
    for name, value in members:
        k, ext = split_key(name)
        if key is None:
            key = k
        elif k != key:
            raise CorruptSampleError(f"{where}: members of two keys {key!r} and {k!r} in one sample")
        fields[ext] = value
    if key is None:
        raise CorruptSampleError(f"{where}: no tar member found in the sample's byte range")
    return key, fields


def _tarfile_members(data: bytes, where: str) -> list[tuple[str, bytes]]:
    """The ``(name, bytes)`` of the regular members, read by ``tarfile`` (pax, GNU, base-256)."""
    out: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                f = tar.extractfile(info)
                if f is None:  # pragma: no cover - regular files always have a file object
                    raise CorruptSampleError(f"{where}: member {info.name!r} has no data")
                out.append((info.name, f.read()))
    except tarfile.TarError as exc:
        raise CorruptSampleError(f"{where}: not a tar member ({exc})") from exc
    return out
