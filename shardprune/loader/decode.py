"""Field decoders: turn a sample's raw fields into arrays and numbers.

A tar field is decoded by the ``encoding`` the dataset header gives it, else by its
extension (the WebDataset convention):

==================  =========================  ======================================
encoding            extensions                 result
==================  =========================  ======================================
``jpeg``/``png``    jpg jpeg png ppm webp      uint8 ndarray, CHW (RGB, or 1 x H x W)
``npy``             npy                        ndarray (``np.load(allow_pickle=False)``)
``int``             cls cls2 index             int
``text``            txt text                   str (UTF-8)
``raw``/other       anything else              bytes, unchanged
==================  =========================  ======================================

Zarr fields arrive as ndarrays already. Decoding returns numpy, not torch, so that
results cross process boundaries as plain pickles; tensors are made at collation.
A user transform ``fn(sample: dict) -> dict`` runs after decoding, in the worker.
"""

from __future__ import annotations

import io
from typing import Any, Callable

import numpy as np

from shardprune.errors import CorruptSampleError

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

_IMAGE = frozenset({"jpeg", "jpg", "png", "image", "ppm", "webp"})
_BY_EXTENSION = {
    "jpg": "jpeg",
    "jpeg": "jpeg",
    "png": "png",
    "ppm": "image",
    "webp": "image",
    "npy": "npy",
    "cls": "int",
    "cls2": "int",
    "index": "int",
    "txt": "text",
    "text": "text",
}


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes -> uint8 CHW array (RGB; grayscale stays one channel)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        opened.draft("RGB", opened.size)
        img: Image.Image = opened
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        arr = np.asarray(img)
    if arr.ndim == 2:
        return arr[None, :, :].copy()
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def encoding_of(name: str, spec: dict[str, Any] | None) -> str:
    """The encoding of field ``name``: the header's ``encoding``, else by extension."""
    if spec and isinstance(spec.get("encoding"), str):
        return str(spec["encoding"]).lower()
    return _BY_EXTENSION.get(name.rsplit(".", 1)[-1].lower(), "raw")


def decode_value(value: Any, encoding: str) -> Any:
    """Decode one field value of the given encoding (non-bytes pass through)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    data = bytes(value)
    if encoding in _IMAGE:
        return decode_image(data)
    if encoding == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if encoding == "int":
        return int(data.decode("utf-8").strip())
    if encoding == "text":
        return data.decode("utf-8")
    return data


def decode_sample(sample: Sample, fields: dict[str, dict[str, Any]], where: str) -> Sample:
    """Decode every field of ``sample`` in place of its bytes.

    Args:
        sample: ``ShardedDataset.decode`` output (``id``, ``label``, ``__key__``, fields).
        fields: The header's field descriptions.
        where: Text naming shard, id and offset, for error messages.

    Raises:
        CorruptSampleError: a field's bytes do not decode as its encoding.
    """
    out: Sample = {}
    for name, value in sample.items():
        if name.startswith("__") or name in ("id", "label"):
            out[name] = value
            continue
        enc = encoding_of(name, fields.get(name))
        try:
            out[name] = decode_value(value, enc)
        except Exception as exc:  # noqa: BLE001 - PIL/numpy raise many kinds
            raise CorruptSampleError(f"{where}: field {name!r} does not decode as {enc} ({exc})") from exc
    return out
