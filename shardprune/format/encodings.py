"""The one table of tar-member encodings, shared by the writers and the reader.

A WebDataset sample's fields are its members' extensions. Both sides of shardprune name
a field's encoding from this table: the converters and ``index`` write it into the
header's ``fields`` (:mod:`shardprune.sources.sniff`, :mod:`shardprune.format.tarindex`),
and the loader decodes by it (:mod:`shardprune.loader.decode`), so a BMP written as
``bmp`` is decoded as an image, not handed over as bytes.

Extensions are matched as WebDataset matches them: the member's extension is lowercased
when the sample is grouped (``a.JPG`` is field ``jpg``), and a decoder is chosen by the
last dot-separated part (``seg.png`` decodes as ``png``).

==========  ==========================================  ===============================
encoding    extensions                                  decoded to
==========  ==========================================  ===============================
jpeg        jpg jpeg                                    uint8 ndarray, CHW
png         png                                         uint8 ndarray, CHW
gif         gif                                         uint8 ndarray, CHW (first frame)
bmp         bmp                                         uint8 ndarray, CHW
tiff        tif tiff                                    uint8 ndarray, CHW
webp        webp                                        uint8 ndarray, CHW
image       ppm pgm pbm pnm                             uint8 ndarray, CHW
npy         npy                                         ndarray (``allow_pickle=False``)
int         cls cls2 index                              int
text        txt text                                    str (UTF-8)
json        json                                        parsed JSON (dict, list, ...)
bytes       anything else                               bytes, unchanged
==========  ==========================================  ===============================
"""

from __future__ import annotations

#: Extension (lowercase, last dot-part) -> encoding.
BY_EXTENSION: dict[str, str] = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "png": "png",
    "gif": "gif",
    "bmp": "bmp",
    "tif": "tiff",
    "tiff": "tiff",
    "webp": "webp",
    "ppm": "image",
    "pgm": "image",
    "pbm": "image",
    "pnm": "image",
    "npy": "npy",
    "cls": "int",
    "cls2": "int",
    "index": "int",
    "txt": "text",
    "text": "text",
    "json": "json",
}
#: Encodings Pillow decodes into a uint8 CHW array.
IMAGE_ENCODINGS = frozenset({"jpeg", "png", "gif", "bmp", "tiff", "webp", "image"})
#: The encoding of an unknown extension: the bytes as stored. Headers written before the
#: table was shared may say ``raw``; it means the same.
BYTES = "bytes"
BYTES_ALIASES = frozenset({BYTES, "raw"})


def normalize_ext(ext: str) -> str:
    """A member extension as WebDataset groups it: lowercased (``JPG`` -> ``jpg``)."""
    return ext.lower()


def encoding_of_ext(ext: str) -> str:
    """The encoding of a field named by its extension (by the last dot-part, any case)."""
    return BY_EXTENSION.get(ext.rsplit(".", 1)[-1].lower(), BYTES)
