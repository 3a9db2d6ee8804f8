"""User metadata columns: per-sample facts stored in the manifest, so filters need no reads.

A column is one value per sample, of one of four types: ``bool``, ``int64``, ``float64``
or ``string``; a sample may lack a value (null). Columns come from the converter: a
Parquet source's columns (``metadata_columns=``), an image folder's file paths
(``path_metadata=``), or a callable run on each sample's fields while it is written
(``DatasetWriter(metadata=fn)``). They are stored after the fixed manifest columns, in
name order, so the same columns give the same manifest bytes.

Column names are Python identifiers (a filter expression names them) other than the
fixed columns (``id``, ``shard``, ``offset``, ``length``, ``label``, ``crc32``).
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from shardprune.errors import ConfigError, SourceError

#: The manifest's own columns: no metadata column may take these names.
RESERVED = ("id", "shard", "offset", "length", "label", "crc32")
#: A per-sample metadata function: ``fn(sample_id, {extension: bytes}) -> {column: value}``.
MetadataFn = Callable[[int, Mapping[str, Any]], Mapping[str, Any]]
Columns = dict[str, pa.Array]


def check_name(name: object, where: str = "metadata") -> str:
    """``name`` if it may name a metadata column, else :class:`ConfigError`."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED:
        raise ConfigError(
            f"{where} column name {name!r} must be a Python identifier other than {list(RESERVED)} "
            "(a filter expression names it); rename the column"
        )
    return name


def to_column(
    name: str, values: Sequence[Any] | np.ndarray | pa.Array, n: int, *, allow_null: bool = False
) -> pa.Array:
    """One column's values as an Arrow array of bool, int64, float64 or string (nulls kept).

    Raises:
        ConfigError: wrong length, or values that are not all booleans, integers, floats
            or strings (or all missing).
    """
    check_name(name)
    try:
        arr = values if isinstance(values, pa.Array) else pa.array(
            values.tolist() if isinstance(values, np.ndarray) and values.dtype.kind in "OUS" else values,
            from_pandas=True,
        )
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ConfigError(
            f"metadata column {name!r} mixes types or holds values that are not bool, int, float or str ({exc}); "
            "give one type per column"
        ) from exc
    if len(arr) != n:
        raise ConfigError(f"metadata column {name!r} has {len(arr)} values for {n} samples; give one per sample")
    t = arr.type
    if pa.types.is_boolean(t):
        return arr
    if pa.types.is_integer(t):
        return arr.cast(pa.int64())
    if pa.types.is_floating(t):
        return arr.cast(pa.float64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.cast(pa.string())
    if allow_null and pa.types.is_null(t):
        return arr
    raise ConfigError(
        f"metadata column {name!r} has type {t}; columns hold bool, int, float or str values (None where missing)"
    )


def take_rows(columns: Mapping[str, Any], rows: np.ndarray) -> Columns:
    """Columns re-ordered so that row ``i`` is input row ``rows[i]`` (a source read in another order)."""
    n = len(rows)
    index = pa.array(np.asarray(rows, dtype=np.int64))
    out: Columns = {}
    for name, values in columns.items():
        arr = values if isinstance(values, pa.Array) else to_column(name, values, len(values))
        out[name] = to_column(name, arr.take(index), n)
    return out


def columns_from_rows(rows: Sequence[Mapping[str, Any]], n: int) -> Columns:
    """Columns from one ``{column: value}`` dict per sample; a missing key is a null."""
    names = sorted({k for row in rows for k in row})
    return {name: to_column(name, [row.get(name) for row in rows], n, allow_null=True) for name in names}


def merge(parts: Sequence[tuple[int, Columns]]) -> Columns:
    """Concatenate per-shard ``(rows, columns)`` (in shard order) into whole columns.

    A column that only some shards have is null in the others.
    """
    names = sorted({k for _, part in parts for k in part})
    n = sum(rows for rows, _ in parts)
    out: Columns = {}
    for name in names:
        types = {part[name].type for _, part in parts if name in part and not pa.types.is_null(part[name].type)}
        if types == {pa.int64(), pa.float64()}:
            types = {pa.float64()}
        if len(types) > 1:
            raise ConfigError(
                f"metadata column {name!r} has different types in different shards ({sorted(map(str, types))}); "
                "give one type per column"
            )
        kind = types.pop() if types else pa.null()
        pieces = [part[name].cast(kind) if name in part else pa.nulls(rows, kind) for rows, part in parts]
        out[name] = to_column(name, pa.concat_arrays(pieces), n)
    return out


def combine(n: int, *sources: Columns) -> Columns:
    """Columns from several origins (source, callable), refusing a name given twice."""
    out: Columns = {}
    for columns in sources:
        for name, arr in columns.items():
            if name in out:
                raise ConfigError(f"metadata column {name!r} is given twice (by the source and by metadata=)")
            out[name] = to_column(name, arr, n)
    return dict(sorted(out.items()))


class JsonColumns:
    """A metadata function: copy keys of each sample's JSON member into columns.

    ``JsonColumns(["width", "height"])`` gives ``{"width": doc["width"], ...}`` from the
    sample's ``json`` member (a missing key or member is a null). What WebDataset corpora
    (LAION-style ``.json`` with size, caption scores, ...) need to filter without reads.
    Picklable, so converter workers can run it.

    Args:
        names: The keys to copy (each a valid column name).
        ext: The member extension holding the JSON object (default ``"json"``).
    """

    def __init__(self, names: Sequence[str], ext: str = "json") -> None:
        self.names = tuple(check_name(n, "json") for n in names)
        if not self.names:
            raise ConfigError("JsonColumns needs at least one key, e.g. JsonColumns(['width', 'height'])")
        self.ext = ext

    def __call__(self, sample_id: int, fields: Mapping[str, Any]) -> dict[str, Any]:
        raw = fields.get(self.ext)
        if raw is None:
            return {}
        try:
            doc = json.loads(bytes(raw))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SourceError(f"sample {sample_id}: its .{self.ext} member is not JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise SourceError(f"sample {sample_id}: its .{self.ext} member is a {type(doc).__name__}, not an object")
        out: dict[str, Any] = {}
        for name in self.names:
            value = doc.get(name)
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise SourceError(
                    f"sample {sample_id}: .{self.ext} key {name!r} holds {type(value).__name__}; "
                    "metadata columns hold bool, int, float or str"
                )
            out[name] = value
        return out
