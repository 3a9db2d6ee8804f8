"""Library entry for conversions: what ``tools/make_shards.py`` and the demo call.

``convert("imagefolder", "/data/out", root="/data/imagenet/train", workers=2)`` builds
the source by name and writes it with :class:`~shardprune.format.writer.DatasetWriter`;
``convert_builtin("mnist1d", out, num_samples=4000, split="test")`` builds the no-network
datasets; :func:`index_tars` adopts existing WebDataset tars in place.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable

from shardprune.errors import ConfigError
from shardprune.format.header import Header
from shardprune.format.tarindex import index_tars
from shardprune.format.writer import DEFAULT_MAX_BYTES, DatasetWriter, Progress
from shardprune.sources.arrays import arrays_source
from shardprune.sources.base import Source
from shardprune.sources.builtin import BUILTINS, digits_source, mnist1d_source
from shardprune.sources.cifar import cifar_source
from shardprune.sources.imagefolder import ImageFolderSource
from shardprune.sources.parquet import ParquetSource
from shardprune.storage import Storage

#: Source kind -> factory taking the kind's options as keyword arguments.
SOURCES: dict[str, Callable[..., Source]] = {
    "arrays": arrays_source,
    "cifar": cifar_source,
    "digits": digits_source,
    "imagefolder": ImageFolderSource,
    "mnist1d": mnist1d_source,
    "parquet": ParquetSource,
}


def make_source(kind: str, **options: Any) -> Source:
    """Build the source of ``kind`` from its options.

    Raises:
        ConfigError: unknown kind or an option the kind does not take.
    """
    factory = SOURCES.get(kind)
    if factory is None:
        raise ConfigError(f"source kind {kind!r} is not one of {sorted(SOURCES)}")
    signature = inspect.signature(factory)
    try:
        signature.bind(**options)
    except TypeError as exc:
        raise ConfigError(f"{kind} source options {sorted(options)} do not fit {kind}{signature}: {exc}") from exc
    return factory(**options)


def convert(
    kind: str,
    output: str | os.PathLike[str] | Storage,
    *,
    shard_format: str = "tar",
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    max_samples: int | None = None,
    workers: int = 1,
    compression: str = "none",
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
    keep_order: bool = False,
    shuffle_seed: int = 0,
    **source_options: Any,
) -> Header:
    """Convert a source to a dataset at ``output``; return its header.

    Args:
        kind: One of :data:`SOURCES` (``imagefolder``, ``arrays``, ``cifar``, ``parquet``,
            ``digits``, ``mnist1d``).
        output: Local directory or ``s3://bucket/prefix``.
        shard_format, max_bytes, max_samples, workers, compression, overwrite,
            storage_options: See :class:`~shardprune.format.writer.DatasetWriter`.
        progress: Called with the number of samples finished since the last call.
        keep_order, shuffle_seed: Input order, or the seeded permutation written by default
            (see :mod:`shardprune.format.permute`).
        **source_options: The source's own options, e.g. ``root=`` for ``imagefolder``.
    """
    writer = DatasetWriter(
        output,
        shard_format=shard_format,
        max_bytes=max_bytes,
        max_samples=max_samples,
        workers=workers,
        compression=compression,
        overwrite=overwrite,
        storage_options=storage_options,
        keep_order=keep_order,
        shuffle_seed=shuffle_seed,
    )
    return writer.write(make_source(kind, **source_options), progress)


def convert_builtin(
    name: str,
    output: str | os.PathLike[str] | Storage,
    *,
    num_samples: int | None = None,
    split: str = "train",
    seed: int | None = None,
    **writer_options: Any,
) -> Header:
    """Convert a built-in dataset (``"digits"`` or ``"mnist1d"``) split.

    Args:
        name: ``"digits"`` or ``"mnist1d"``.
        output: Where to write.
        num_samples: digits: keep the first ``num_samples`` of the split (default all).
            mnist1d: samples generated for train and test together (default 5000);
            build both splits with the same value to get disjoint train and test sets.
        split: ``"train"`` (default) or ``"test"``.
        seed: mnist1d generator seed (default mnist1d's 42); digits takes none.
        **writer_options: Passed to :func:`convert` (``shard_format``, ``workers``, ...).
    """
    if name not in BUILTINS:
        raise ConfigError(f"built-in dataset {name!r} is not one of {BUILTINS}")
    options: dict[str, Any] = {"split": split}
    if name == "mnist1d":
        if num_samples is not None:
            options["num_samples"] = num_samples
        if seed is not None:
            options["seed"] = seed
    else:
        if seed is not None:
            raise ConfigError("digits has a fixed split and takes no seed; drop seed=")
        options["num_samples"] = num_samples
    return convert(name, output, **writer_options, **options)


__all__ = ["SOURCES", "convert", "convert_builtin", "index_tars", "make_source"]
