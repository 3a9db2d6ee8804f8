"""Write arbitrary Python samples one at a time: WebDataset's ``ShardWriter``, with a manifest.

For data that is not a folder, a table or arrays: a loop that produces samples as dicts
of field -> value writes them with :meth:`SampleWriter.write`; closing the writer
publishes the dataset exactly as a conversion does (shards, then the manifest, then the
header last and atomically), so an exception inside the ``with`` block publishes
nothing. Tar shards only (zarr holds fixed-shape arrays: use ``DatasetWriter.write``).

Field values are encoded by type, and named by extension as in WebDataset:

* ``bytes`` (or ``bytearray``/``memoryview``): stored as they are (``jpg``, ``png``, ...);
* ``str``: UTF-8 (``txt``);
* ``int``: ASCII decimal (``cls``, ``index``);
* ``numpy.ndarray``: ``.npy`` bytes, written without pickle; the field's extension must
  decode as npy (``npy``, ``x.npy``);
* ``dict``/``list``: JSON; the extension must decode as json (``json``).

The reserved key ``label`` (an int ``0..num_classes-1``) becomes the manifest label and
a ``cls`` member; either every sample has one or none does.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from shardprune.errors import ConfigError, SourceError
from shardprune.format.encodings import encoding_of_ext
from shardprune.format.header import Header, ShardInfo
from shardprune.format.manifest import NO_LABEL, Manifest, sha256
from shardprune.format.metadata import columns_from_rows, combine
from shardprune.format.tarwriter import TarShardWriter, sample_key
from shardprune.sources.base import check_labels
from shardprune.validate import check_int

if TYPE_CHECKING:
    from shardprune.format.writer import DatasetWriter


def encode_field(name: str, value: Any, where: str) -> bytes:
    """One field value -> the member bytes (see the module docstring)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value)).encode("ascii")
    encoding = encoding_of_ext(name)
    if isinstance(value, np.ndarray):
        if encoding != "npy" or value.dtype.kind not in "biufc":
            raise SourceError(
                f"{where}: field {name!r} holds a {value.dtype} ndarray; arrays are written as .npy, so name the "
                "field 'npy' (or '<name>.npy') and use a numeric dtype, or encode it to bytes yourself"
            )
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
        return buf.getvalue()
    if isinstance(value, (dict, list)) and encoding == "json":
        return json.dumps(value, sort_keys=True).encode("utf-8")
    raise SourceError(
        f"{where}: field {name!r} holds {type(value).__name__}; a field is bytes, str, int, an ndarray "
        "(field 'npy') or a dict/list (field 'json')"
    )


class SampleWriter:
    """Write samples one by one into a dataset; publish it on :meth:`close`.

    Made by :meth:`DatasetWriter.samples` (which sets the output, shard size limits and
    ``overwrite``). Use it as a context manager::

        with DatasetWriter("out/ds", max_samples=1000).samples() as sink:
            for image, caption, y in my_data():
                sink.write({"jpg": image, "txt": caption, "label": y}, metadata={"width": 256})

    Args:
        writer: The :class:`DatasetWriter` whose settings apply.
        num_classes: Labels must lie in ``0..num_classes-1`` (default: max label + 1).
    """

    def __init__(self, writer: DatasetWriter, *, num_classes: int | None = None) -> None:
        if writer.shard_format != "tar":
            raise ConfigError("DatasetWriter.samples() writes tar shards; pass shard_format='tar'")
        self.writer = writer
        self.num_classes = num_classes
        self._staging: str | None = writer._prepare()
        self._shards: list[ShardInfo] = []
        self._rows: list[tuple[int, int, int, int]] = []  # shard, offset, length, crc32
        self._labels: list[int | None] = []
        self._meta: list[Mapping[str, Any]] = []
        self._exts: set[str] = set()
        self._file: Any = None
        self._tar: TarShardWriter | None = None
        self._in_shard = 0
        self.header: Header | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def _roll(self, size: int) -> TarShardWriter:
        w = self.writer
        if self._tar is not None and self._in_shard and (
            (w.max_samples is not None and self._in_shard >= w.max_samples)
            or (w.max_bytes is not None and self._tar.position + size > w.max_bytes)
        ):
            self._close_shard()
        if self._tar is None:
            assert self._staging is not None
            index = len(self._shards)
            os.makedirs(os.path.join(self._staging, "shards"), exist_ok=True)
            self._file = open(os.path.join(self._staging, "shards", f"{index:06d}.tar"), "wb", buffering=1 << 20)
            self._tar = TarShardWriter(self._file)
            self._in_shard = 0
        return self._tar

    def _close_shard(self) -> None:
        if self._tar is None:
            return
        size = self._tar.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._shards.append(ShardInfo(path=f"shards/{len(self._shards):06d}.tar", bytes=size, samples=self._in_shard))
        self._tar = self._file = None

    def write(self, sample: Mapping[str, Any], *, metadata: Mapping[str, Any] | None = None) -> int:
        """Append one sample; return its id (0, 1, ... in call order).

        Args:
            sample: Field (extension) -> value, plus an optional int ``label``.
            metadata: ``{column: bool | int | float | str | None}`` for the manifest's
                metadata columns (filters read them without reading the sample).

        Raises:
            SourceError: a value cannot be encoded, a field name is not an extension, or
                the sample has no fields.
            ConfigError: the writer is closed.
        """
        if self._staging is None:
            raise ConfigError("this SampleWriter is closed; open another with DatasetWriter(...).samples()")
        sample_id = len(self._rows)
        where = f"sample {sample_id}"
        if not isinstance(sample, Mapping):
            raise SourceError(f"{where} is a {type(sample).__name__}; write a dict of field -> value")
        label = sample.get("label")
        if label is not None:
            fix = "give the class index, or leave label out"
            label = check_int(f"{where}: label", label, 0, fix=fix, error=SourceError)
        fields: dict[str, bytes] = {}
        for name, value in sample.items():
            if name == "label":
                continue
            if not isinstance(name, str) or not name or name != name.lower() or "/" in name or name.startswith("."):
                raise SourceError(
                    f"{where}: field name {name!r} must be a lowercase tar extension such as 'jpg' or 'seg.png'"
                )
            fields[name] = encode_field(name, value, where)
        if not fields:
            raise SourceError(f"{where} has no fields; write at least one, e.g. {{'jpg': image_bytes}}")
        if label is not None:
            if "cls" in fields:
                raise SourceError(f"{where}: has both 'label' and a 'cls' field; give the class once, as label")
            fields["cls"] = str(int(label)).encode("ascii")
        size = sum(512 + -(-len(v) // 512) * 512 for v in fields.values())
        tar = self._roll(size)
        offset, length, crc = tar.add(sample_key(sample_id), fields)
        self._in_shard += 1
        self._rows.append((len(self._shards), offset, length, crc))
        self._labels.append(None if label is None else int(label))
        self._meta.append(dict(metadata or {}))
        self._exts.update(fields)
        return sample_id

    def close(self) -> Header:
        """Finish the last shard and publish the dataset; return its header (idempotent)."""
        if self.header is not None:
            return self.header
        if self._staging is None:
            raise ConfigError("this SampleWriter was aborted; nothing was published")
        try:
            if not self._rows:
                raise SourceError("no sample was written; nothing to publish")
            self._close_shard()
            self.header = self._publish(self._staging)
            return self.header
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop everything written so far (nothing is published)."""
        if self._file is not None:
            self._file.close()
            self._tar = self._file = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def _publish(self, staging: str) -> Header:
        n = len(self._rows)
        has = [lab is not None for lab in self._labels]
        if all(has):
            labels, num_classes = check_labels(np.asarray(self._labels, dtype=np.int64), self.num_classes, "samples")
            num: int | None = num_classes
        elif any(has):
            first = has.index(not has[0])
            raise SourceError(
                f"sample {first} {'has' if has[first] else 'has no'} label while sample 0 "
                f"{'has' if has[0] else 'has none'}; label every sample or none"
            )
        else:
            labels, num = np.full(n, NO_LABEL, dtype=np.int64), None
        rows = np.asarray(self._rows, dtype=np.int64).reshape(n, 4)
        manifest = Manifest.from_columns(
            shard=rows[:, 0],
            offset=rows[:, 1],
            length=rows[:, 2],
            label=labels,
            crc32=rows[:, 3].astype(np.uint32),
            metadata=combine(n, columns_from_rows(self._meta, n)),
        )
        manifest_bytes = manifest.to_bytes()
        header = Header(
            num_samples=n,
            shard_format="tar",
            fields={ext: {"encoding": encoding_of_ext(ext)} for ext in sorted(self._exts)},
            shards=tuple(self._shards),
            manifest_sha256=sha256(manifest_bytes),
            num_classes=num,
            source={"kind": "samples"},
        )
        return self.writer._publish(staging, header, manifest_bytes)

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
