"""A Parquet table with an image-bytes column and a label column.

The image column may be binary, or a struct with a ``bytes`` member (what Hugging Face
``datasets`` writes for an ``Image`` feature). Images are stored as they are. Ranges are
read row group by row group, so a worker reads only the row groups its shards need.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shardprune.errors import SourceError
from shardprune.sources.base import BytesSource, check_labels
from shardprune.sources.sniff import encoding_of, image_ext


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError as exc:
        raise SourceError(f"{path!r} does not exist; pass an existing Parquet file") from exc
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path!r} is not a readable Parquet file ({exc})") from exc


class ParquetSource(BytesSource):
    """Image bytes and labels from one Parquet file.

    Args:
        path: The Parquet file.
        image_column: Column of image bytes (default ``"image"``).
        label_column: Column of integer labels (default ``"label"``; None: unlabelled).
        num_classes: Labels must lie in ``0..num_classes-1`` (default: max label + 1).
        metadata_columns: Further columns (bool, int, float or str) copied into the
            manifest as metadata, for filters that need no reads (default none).

    Raises:
        SourceError: the file or a column is missing, or labels are out of range.
    """

    kind = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        image_column: str = "image",
        label_column: str | None = "label",
        num_classes: int | None = None,
        metadata_columns: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.path = os.fspath(path)
        pf = _open(self.path)
        names = pf.schema_arrow.names
        self.metadata_names = tuple(metadata_columns)
        for col in (image_column, label_column, *self.metadata_names):
            if col is not None and col not in names:
                raise SourceError(f"{self.path!r} has no column {col!r} (it has {names}); pass the right column name")
        meta = pf.metadata
        self.image_column = image_column
        self.label_column = label_column
        group_rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(group_rows, dtype=np.int64)])
        n = int(self.group_starts[-1])
        if label_column is None:
            self.labels = np.full(n, -1, dtype=np.int64)
            self.num_classes = None
        else:
            column = pf.read(columns=[label_column]).column(0)
            if column.null_count:
                raise SourceError(f"{self.path!r}: column {label_column!r} has {column.null_count} null labels")
            self.labels, self.num_classes = check_labels(column.to_numpy(), num_classes, self.path)
        col_index = names.index(image_column)
        sizes = []
        for g, rows in enumerate(group_rows):
            group = meta.row_group(g)
            # Byte-rolling needs sizes before reading; the row group's mean is exact enough.
            total = sum(
                group.column(c).total_uncompressed_size
                for c in range(group.num_columns)
                if group.column(c).path_in_schema.split(".")[0] == names[col_index]
            )
            sizes.append(np.full(rows, 512 + -(-total // max(rows, 1) // 512) * 512, dtype=np.int64))
        self._sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
        self.description: dict[str, Any] = {
            "kind": self.kind,
            "path": os.path.abspath(self.path),
            "image_column": image_column,
            "label_column": label_column,
        }
        if self.metadata_names:
            self.description["metadata_columns"] = list(self.metadata_names)

    def metadata_columns(self) -> dict[str, Any]:
        if not self.metadata_names:
            return {}
        table = _open(self.path).read(columns=list(self.metadata_names))
        return {name: table.column(name).combine_chunks() for name in self.metadata_names}

    def tar_sizes(self) -> np.ndarray:
        return self._sizes

    def _images(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        pf = _open(self.path)
        first = int(np.searchsorted(self.group_starts, start, side="right")) - 1
        row = int(self.group_starts[first])
        for g in range(first, len(self.group_starts) - 1):
            if row >= stop:
                break
            column = pf.read_row_group(g, columns=[self.image_column]).column(0)
            for value in column.to_pylist():
                if start <= row < stop:
                    yield row, value
                row += 1

    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        for row, value in self._images(start, stop):
            if isinstance(value, dict):
                value = value.get("bytes")
            if not isinstance(value, bytes):
                raise SourceError(
                    f"{self.path!r} row {row}: column {self.image_column!r} holds {type(value).__name__}, "
                    "expected image bytes"
                )
            ext = image_ext(value[:16])
            if ext is None:
                raise SourceError(f"{self.path!r} row {row}: column {self.image_column!r} is not an image")
            yield {ext: value}

    def tar_fields(self, exts: set[str]) -> dict[str, dict[str, Any]]:
        return {ext: {"encoding": encoding_of(ext)} for ext in sorted(exts)}
