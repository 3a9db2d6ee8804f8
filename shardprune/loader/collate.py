"""Collate decoded samples into a batch of tensors.

Per field, over the batch's samples:

* ndarrays of one shape and dtype -> ``torch.from_numpy(np.stack(...))``;
* tensors of one shape -> ``torch.stack``;
* ints -> int64 tensor; floats -> float32 tensor; bools -> bool tensor;
* anything else (ragged arrays, strings, bytes) -> a list.

The sample's ``id`` becomes the batch's ``ids`` (int64), ``label`` an int64 tensor.
The loader adds ``weights`` and the Mixup fields (see :mod:`shardprune.loader.mixup`).

The batch has every field that any of its samples has, in order of first appearance
(never just the first sample's keys). A field that some samples lack is a list of one
value per sample with :data:`MISSING` (``None``) where it is absent, whatever its type
(arrays as tensors, other values as they are), so ``batch["txt"][i] is None`` tells which samples carry a caption.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from shardprune.loader.decode import Sample

Batch = dict[str, Any]
#: The value of a field in a sample that lacks it.
MISSING = None


def collate_values(values: list[Any]) -> Any:
    """One field's values -> a tensor where they stack, else a list."""
    first = values[0]
    if isinstance(first, np.ndarray):
        if all(isinstance(v, np.ndarray) and v.shape == first.shape and v.dtype == first.dtype for v in values):
            return torch.from_numpy(np.stack(values))
        return [torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for v in values]
    if isinstance(first, torch.Tensor):
        if all(isinstance(v, torch.Tensor) and v.shape == first.shape for v in values):
            return torch.stack(values)
        return list(values)
    if isinstance(first, (bool, np.bool_)) and all(isinstance(v, (bool, np.bool_)) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(first, (int, np.integer)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
    ):
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    if isinstance(first, (float, np.floating)) and all(isinstance(v, (int, float, np.number)) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    return list(values)


def _tensor_or_value(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def collate(samples: list[Sample], fields: tuple[str, ...] = ()) -> Batch:
    """Collate ``samples`` into a batch dict (fields missing from some samples: lists with :data:`MISSING`).

    ``fields`` are keys every batch has: one that no sample has is all :data:`MISSING`.
    """
    keys = list(dict.fromkeys([*(k for s in samples for k in s), *fields]))
    batch: Batch = {}
    for key in keys:
        if not all(key in s for s in samples):
            batch[key] = [_tensor_or_value(s[key]) if key in s else MISSING for s in samples]
            continue
        values = [s[key] for s in samples]
        if key == "id":
            batch["ids"] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif key == "label":
            batch["label"] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        elif key.startswith("__"):
            batch[key] = list(values)
        else:
            batch[key] = collate_values(values)
    return batch
