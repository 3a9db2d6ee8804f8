"""Recognise image files by their first bytes, and name each tar extension's encoding."""

from __future__ import annotations

from shardprune.format.encodings import BY_EXTENSION, encoding_of_ext

#: Tar member extension -> the ``encoding`` written into the header's ``fields``: the
#: table the loader decodes by (:mod:`shardprune.format.encodings`), so the two agree.
ENCODINGS = BY_EXTENSION

#: How many leading bytes :func:`image_ext` needs.
SNIFF_BYTES = 12


def image_ext(head: bytes) -> str | None:
    """The tar extension for an image whose file starts with ``head``, or None if not an image.

    Only the magic numbers are checked, so the bytes can be stored unchanged without
    decoding them.
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def encoding_of(ext: str) -> str:
    """The header encoding of a tar extension (``"bytes"`` when unknown)."""
    return encoding_of_ext(ext)
