"""The converter's sample order: a seeded permutation of the whole input, recorded in the header.

Most inputs are sorted by class (``imagefolder`` walks class folders in order, CIFAR and
many WebDataset corpora are written that way). A loader that reads shards in sequence
then sees a few classes per batch. The converter therefore writes output sample ``i`` from
input sample ``perm[i]``, where ``perm = input_permutation(N, seed)`` is a Philox stream
keyed by the seed (purpose :data:`PURPOSE_CONVERT`): the same input and seed give the same
dataset bytes on every machine and for any number of writer processes.

The header's ``source["order"]`` records what was done, so the permutation can be
recomputed to map a sample back to its input position::

    {"shuffled": true, "shuffle_seed": 0, "permutation": "philox(seed, 201).permutation(N)"}
    {"shuffled": false}                                     # keep_order=True / --no-shuffle

Headers without ``order`` (older datasets) read as before; nothing in the format changed.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from shardprune.format.metadata import take_rows
from shardprune.policies.rng import philox
from shardprune.sources.base import ArraySource, BytesSource, Source

#: Philox purpose word of the converter's permutation (the loader uses 101..104).
PURPOSE_CONVERT = 201
#: Key of the header's ``source`` entry describing the written order.
ORDER_KEY = "order"


def input_permutation(n: int, seed: int) -> np.ndarray:
    """int64[n]: ``perm[i]`` is the input position of output sample ``i``."""
    return philox(seed, PURPOSE_CONVERT).permutation(n).astype(np.int64)


def order_record(shuffle_seed: int | None) -> dict[str, Any]:
    """The header ``source["order"]`` entry for a conversion (None: input order kept)."""
    if shuffle_seed is None:
        return {"shuffled": False}
    return {
        "shuffled": True,
        "shuffle_seed": int(shuffle_seed),
        "permutation": f"philox(seed, {PURPOSE_CONVERT}).permutation(N)",
    }


class PermutedArraySource(ArraySource):
    """An array source read in the order ``perm`` (output sample i = input sample ``perm[i]``).

    Args:
        inner: The source in input order.
        perm: int64[N], a permutation of ``0..N-1``.
    """

    def __init__(self, inner: ArraySource, perm: np.ndarray) -> None:
        # Same arrays and settings as ``inner`` (already validated there); only the order differs.
        self.__dict__.update(inner.__dict__)
        self.inner = inner
        self.perm = perm
        self.labels = inner.labels[perm]

    def array_range(self, start: int, stop: int) -> np.ndarray:
        idx = self.perm[start:stop]
        # Gather in ascending input order (sequential for memory-mapped inputs), then restore.
        rank = np.argsort(idx, kind="stable")
        out = np.empty((idx.size, *self.sample_shape), dtype=self.inner.x.dtype)
        out[rank] = np.asarray(self.inner.x[idx[rank]])
        return out

    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        # Through the input source's own encoder (a subclass may override it), one sample each.
        for i in self.perm[start:stop].tolist():
            yield from self.inner.tar_samples(i, i + 1)

    def metadata_columns(self) -> dict[str, Any]:
        # Row i of the written dataset is input row perm[i]: its metadata moves with it.
        return take_rows(self.inner.metadata_columns(), self.perm)


class PermutedBytesSource(BytesSource):
    """A source of encoded files read in the order ``perm``.

    Args:
        inner: The source in input order.
        perm: int64[N], a permutation of ``0..N-1``.
    """

    def __init__(self, inner: Source, perm: np.ndarray) -> None:
        self.inner = inner
        self.perm = perm
        self.kind = inner.kind
        self.labels = inner.labels[perm]
        self.num_classes = inner.num_classes
        self.description = inner.description
        self._sizes = inner.tar_sizes()[perm]

    def tar_sizes(self) -> np.ndarray:
        return self._sizes

    def tar_samples(self, start: int, stop: int) -> Iterator[dict[str, bytes]]:
        # Sources only read contiguous ranges: one range of one sample per output position.
        for i in self.perm[start:stop].tolist():
            yield from self.inner.tar_samples(i, i + 1)

    def tar_fields(self, exts: set[str]) -> dict[str, dict[str, Any]]:
        return self.inner.tar_fields(exts)

    def metadata_columns(self) -> dict[str, Any]:
        # Row i of the written dataset is input row perm[i]: its metadata moves with it.
        return take_rows(self.inner.metadata_columns(), self.perm)


def permuted(source: Source, shuffle_seed: int | None) -> Source:
    """``source`` in the converter's order: shuffled by ``shuffle_seed``, or as is when None."""
    if shuffle_seed is None:
        return source
    perm = input_permutation(len(source), shuffle_seed)
    if isinstance(source, ArraySource):
        return PermutedArraySource(source, perm)
    return PermutedBytesSource(source, perm)
