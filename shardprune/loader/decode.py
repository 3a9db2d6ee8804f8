"""Field decoders: turn a sample's raw fields into arrays and numbers.

A tar field is decoded by the ``encoding`` the dataset header gives it, else by its
extension, both from the one table :mod:`shardprune.format.encodings` (the writers use
it too): every image encoding (JPEG, PNG, GIF, BMP, TIFF, WebP, PPM) becomes a uint8
CHW array, ``npy`` an ndarray, ``int`` an int, ``text`` a str, ``json`` the parsed
value, and anything else stays bytes.

Samples need not all have the same fields (optional captions, a symlink member that
``index`` skipped, a folder mixing ``.png`` and ``.bmp``): a sample simply lacks the
field, and collation gives that field as a per-sample list with ``None``
(:data:`shardprune.loader.collate.MISSING`) where it is absent. A ``fields=`` selection
is a contract instead: a selected field that a sample lacks raises
:class:`~shardprune.errors.CorruptSampleError` naming the shard, id and offset.
:class:`MergeFields` folds alternatives (``png`` or ``bmp``) into one field.

Zarr fields arrive as ndarrays already. Decoding returns numpy, not torch, so that
results cross process boundaries as plain pickles; tensors are made at collation.
A user transform ``fn(sample: dict) -> dict`` runs after decoding, in the worker.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any, Callable

import numpy as np

from shardprune.errors import ConfigError, CorruptSampleError
from shardprune.format.encodings import BYTES_ALIASES, IMAGE_ENCODINGS, encoding_of_ext

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


def decode_image(data: bytes) -> np.ndarray:
    """Image bytes (any Pillow format) -> uint8 CHW array (RGB; grayscale stays one channel).

    A GIF gives its first frame; 16-bit and palette images are converted to RGB.
    """
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
    return encoding_of_ext(name)


def decode_value(value: Any, encoding: str) -> Any:
    """Decode one field value of the given encoding (non-bytes pass through)."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    data = bytes(value)
    if encoding in BYTES_ALIASES:
        return data
    if encoding in IMAGE_ENCODINGS:
        return decode_image(data)
    if encoding == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if encoding == "int":
        return int(data.decode("utf-8").strip())
    if encoding == "text":
        return data.decode("utf-8")
    if encoding == "json":
        return json.loads(data.decode("utf-8"))
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


#: Sample keys that every sample has, whatever the dataset's fields.
ALWAYS = frozenset({"id", "label", "__key__"})


def select_fields(sample: Sample, fields: frozenset[str], where: str) -> Sample:
    """Keep ``fields`` (and the keys every sample has) of ``sample``.

    Args:
        sample: A sample as ``ShardedDataset.decode`` returns it.
        fields: The user's ``fields=`` selection: a contract that every sample has them.
        where: Text naming shard, id and offset, for the error.

    Raises:
        CorruptSampleError: the sample lacks a selected field.
    """
    missing = sorted(fields.difference(sample))
    if missing:
        present = sorted(k for k in sample if k not in ALWAYS)
        raise CorruptSampleError(
            f"{where}: has no field {missing[0]!r} (it has {present}), but fields={sorted(fields)} requires it; "
            "drop it from fields= to get it as a per-sample list with None where missing, or re-convert the data"
        )
    return {k: v for k, v in sample.items() if k in fields or k in ALWAYS}


class MergeFields:
    """A transform that folds alternative fields into one (WebDataset's ``"png;bmp"``).

    ``MergeFields(image=("jpg", "png", "bmp"))`` moves the first of those fields a sample
    has to ``image`` and drops the others, so an image folder mixing formats gives one
    ``image`` field that stacks. Module-level and picklable, so it runs in the workers
    (``StreamingLoader(..., transform=MergeFields(...))``).

    Args:
        **targets: New field name -> alternatives, in order of preference.

    Raises:
        ConfigError: no target, or a target with no alternatives.
    """

    def __init__(self, **targets: Iterable[str]) -> None:
        if not targets:
            raise ConfigError("MergeFields() needs at least one target, e.g. MergeFields(image=('png', 'bmp'))")
        self.targets = {name: tuple(alts) for name, alts in targets.items()}
        for name, alts in self.targets.items():
            if not alts or not all(isinstance(a, str) and a for a in alts):
                raise ConfigError(
                    f"MergeFields({name}={alts!r}) needs a non-empty tuple of field names, e.g. ('png', 'bmp')"
                )

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        for name, alts in self.targets.items():
            found = [a for a in alts if a in out]
            values = [out.pop(a) for a in found]
            if values:
                out[name] = values[0]
        return out

    def __repr__(self) -> str:
        return f"MergeFields({', '.join(f'{k}={v!r}' for k, v in self.targets.items())})"
