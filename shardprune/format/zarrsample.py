"""Decode one sample's bytes from a zarr shard.

A zarr shard is a zarr v3 array whose one (outer) chunk uses the sharding codec with
an inner chunk of exactly one sample, so each sample is a separately encoded byte
range inside the shard object. The manifest holds that range; decoding it needs only
the inner codecs, named in the header field as ``compression`` (``none`` or ``zstd``)
over little-endian raw bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardprune.errors import CorruptSampleError, DatasetError

COMPRESSIONS = ("none", "zstd")


def field_dtype_shape(spec: dict[str, Any], name: str) -> tuple[np.dtype[Any], tuple[int, ...]]:
    try:
        dtype = np.dtype(spec["dtype"]).newbyteorder("<")
        shape = tuple(int(s) for s in spec["shape"])
    except (KeyError, TypeError) as exc:
        raise DatasetError(f"zarr field {name!r} needs dtype and shape, got {spec!r}") from exc
    return dtype, shape


def decode_array(data: bytes, spec: dict[str, Any], name: str, where: str) -> np.ndarray:
    """Turn an inner chunk's bytes into the sample array (shape from the header, no batch axis)."""
    dtype, shape = field_dtype_shape(spec, name)
    compression = spec.get("compression", "none")
    if compression == "zstd":
        from numcodecs import Zstd

        try:
            data = bytes(Zstd().decode(data))
        except Exception as exc:  # noqa: BLE001 - numcodecs raises RuntimeError/ValueError
            raise CorruptSampleError(f"{where}: zstd decode failed ({exc})") from exc
    elif compression != "none":
        raise DatasetError(f"zarr field {name!r}: compression={compression!r}, expected one of {COMPRESSIONS}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise CorruptSampleError(f"{where}: decoded {len(data)} bytes, expected {expected} for {dtype} {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)
