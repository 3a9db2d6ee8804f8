"""What a converter input provides: N samples, their labels, and any contiguous range of them.

Two shapes of input exist. A :class:`BytesSource` hands over encoded files (images)
as they are, for tar shards only. An :class:`ArraySource` holds fixed-shape arrays,
written as ``.npy`` (or ``.png``) members in tar shards or as inner chunks in zarr shards.

Sources are pickled to converter worker processes, so they hold paths and arrays,
never open files.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import Any, Iterator

import numpy as np

from shardprune.errors import ConfigError, SourceError
from shardprune.format.manifest import NO_LABEL
from shardprune.format.tarwriter import padded_size

TAR_ARRAY_ENCODINGS = ("npy", "png")


def check_labels(y: Any, num_classes: int | None, where: str) -> tuple[np.ndarray, int]:
    """Validate integer class labels; return them as int64 with the number of classes.

    Args:
        y: One label per sample.
        num_classes: Labels must lie in ``0..num_classes-1``; None means ``max(y) + 1``.
        where: Names the input in error messages.

    Raises:
        SourceError: labels are not 1-D integers or lie outside the allowed range.
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise SourceError(f"{where}: labels have shape {arr.shape}; expected one integer label per sample")
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise SourceError(f"{where}: labels have dtype {arr.dtype}; expected integers 0..num_classes-1")
    labels = arr.astype(np.int64)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be >= 1")
    if labels.size == 0:
        return labels, num_classes or 0
    low, high = int(labels.min()), int(labels.max())
    limit = num_classes if num_classes is not None else high + 1
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise SourceError(
            f"{where}: label {bad} is out of range 0..{limit - 1}; fix the labels"
            + ("" if num_classes is None else " or pass a larger --num-classes")
        )
    return labels, limit


class Source(ABC):
    """A converter input.

    Attributes:
        kind: The source kind (``imagefolder``, ``arrays``, ...), recorded in the header.
        labels: int64 label per sample, ``-1`` (:data:`NO_LABEL`) everywhere when unlabelled.
        num_classes: Number of classes, or None when unlabelled.
        description: JSON-able facts about the input, written to the header's ``source``.
    """

    kind: str = ""
    labels: np.ndarray
    num_classes: int | None
    description: dict[str, Any]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def labelled(self) -> bool:
        return self.num_classes is not None

    def metadata_columns(self) -> dict[str, Any]:
        """The source's own manifest metadata columns, name -> one value per sample (default none)."""
        return {}

    @abstractmethod
    def tar_sizes(self) -> np.ndarray:
        """Each sample's size in a tar shard (members and headers, ``cls`` excluded).

        Used only to roll shards by bytes, so an estimate is fine where the exact size
        is not known before encoding; it must depend on the input alone.
        """

    @abstractmethod
    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        """Yield ``{extension: bytes}`` for samples ``start..stop-1`` (no ``cls``)."""

    @abstractmethod
    def tar_fields(self, exts: set[str]) -> dict[str, dict[str, Any]]:
        """The header ``fields`` of a tar dataset whose samples used extensions ``exts``."""


class BytesSource(Source):
    """Encoded files stored unchanged (tar shards only)."""


class ArraySource(Source):
    """Fixed-shape array samples.

    Args:
        x: Samples stacked on axis 0 (any numeric dtype, at least 1-D).
        y: Labels, or None for unlabelled data.
        num_classes: See :func:`check_labels`.
        name: Field name in zarr shards (default ``"x"``).
        tar_encoding: ``"npy"`` (default, exact) or ``"png"`` (uint8 images of shape
            (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)) for the tar member.
        kind: Source kind for the header.
        description: Header ``source`` facts.

    Raises:
        SourceError: x and y differ in length, x is not numeric, labels out of range.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        *,
        num_classes: int | None = None,
        name: str = "x",
        tar_encoding: str = "npy",
        kind: str = "arrays",
        description: dict[str, Any] | None = None,
    ) -> None:
        where = f"{kind} input"
        if x.ndim < 1:
            raise SourceError(f"{where}: samples must be an array with a sample axis, got a scalar")
        if x.dtype.kind not in "biuf":
            raise SourceError(f"{where}: samples have dtype {x.dtype}; only bool, integer and float arrays are stored")
        if tar_encoding not in TAR_ARRAY_ENCODINGS:
            raise ConfigError(f"tar_encoding={tar_encoding!r} is not one of {TAR_ARRAY_ENCODINGS}")
        if tar_encoding == "png" and not (
            x.dtype == np.uint8 and (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3, 4)))
        ):
            raise ConfigError(f"{where}: png needs uint8 images (N, H, W[, C]), got {x.dtype} {x.shape}")
        self.kind = kind
        self.x = x
        if y is None:
            self.labels = np.full(x.shape[0], NO_LABEL, dtype=np.int64)
            self.num_classes = None
        else:
            if len(y) != x.shape[0]:
                raise SourceError(
                    f"{where}: {x.shape[0]} samples but {len(y)} labels; the arrays must have the same length"
                )
            self.labels, self.num_classes = check_labels(y, num_classes, where)
        self.name = name
        self.tar_encoding = tar_encoding
        self.description = dict(description or {})

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.x.dtype.newbyteorder("<") if self.x.dtype.byteorder == ">" else self.x.dtype

    def array_range(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.x[start:stop])

    def tar_sizes(self) -> np.ndarray:
        nbytes = int(np.prod(self.sample_shape, dtype=np.int64)) * self.x.dtype.itemsize
        # An .npy header is 128 bytes for any shape we write.
        size = padded_size(nbytes + (128 if self.tar_encoding == "npy" else 0))
        return np.full(len(self), size, dtype=np.int64)

    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        for row in self.array_range(start, stop):
            if self.tar_encoding == "npy":
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(row), allow_pickle=False)
                yield {"npy": buf.getvalue()}
            else:
                from PIL import Image

                img = row[..., 0] if row.ndim == 3 and row.shape[2] == 1 else row
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                yield {"png": buf.getvalue()}

    def tar_fields(self, exts: set[str]) -> dict[str, dict[str, Any]]:
        if self.tar_encoding == "npy":
            return {"npy": {"encoding": "npy", "dtype": self.dtype.name, "shape": list(self.sample_shape)}}
        return {"png": {"encoding": "png", "dtype": "uint8", "shape": list(self.sample_shape)}}

    def zarr_field(self, compression: str) -> dict[str, dict[str, Any]]:
        return {
            self.name: {
                "encoding": "array",
                "dtype": self.dtype.name,
                "shape": list(self.sample_shape),
                "compression": compression,
            }
        }
