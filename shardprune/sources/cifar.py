"""CIFAR-10 and CIFAR-100 in their "python version" layout, parsed without ``pickle.load``.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` .. ``data_batch_5`` (train),
``test_batch`` and ``batches.meta``. CIFAR-100 (``cifar-100-python``): ``train``,
``test`` and ``meta``, with ``fine_labels`` and ``coarse_labels``. Each batch holds
``data``: uint8 (N, 3072), channel-major 32x32 RGB; samples come out as (32, 32, 3).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from shardprune.errors import ConfigError, SourceError
from shardprune.sources.base import ArraySource
from shardprune.sources.safepickle import safe_loads

SPLITS = ("train", "test")
LABEL_KINDS = ("fine", "coarse")


def _load(path: str) -> dict[Any, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SourceError(f"cannot read {path!r}: {exc.strerror}") from exc
    doc = safe_loads(data, path)
    if not isinstance(doc, dict):
        raise SourceError(f"{path!r} is not a CIFAR batch (its pickle is not a dict)")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in doc.items()}


def _names(values: Any) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def cifar_source(
    root: str | os.PathLike[str], *, split: str = "train", label_kind: str = "fine", tar_encoding: str = "png"
) -> ArraySource:
    """Read a CIFAR-10/100 python-format directory.

    Args:
        root: ``cifar-10-batches-py`` or ``cifar-100-python`` directory.
        split: ``"train"`` (default) or ``"test"``.
        label_kind: CIFAR-100 only: ``"fine"`` (100 classes, default) or ``"coarse"`` (20).
        tar_encoding: Member encoding in tar shards: ``"png"`` (default) or ``"npy"``.

    Raises:
        SourceError: the directory is not a CIFAR layout or a batch is malformed.
    """
    root = os.fspath(root)
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of {SPLITS}")
    if label_kind not in LABEL_KINDS:
        raise ConfigError(f"label_kind={label_kind!r} is not one of {LABEL_KINDS}")
    if not os.path.isdir(root):
        raise SourceError(f"CIFAR root {root!r} is not a directory; pass cifar-10-batches-py or cifar-100-python")
    if os.path.exists(os.path.join(root, "batches.meta")):
        variant, num_classes, label_key = "cifar10", 10, "labels"
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_name, names_key = "batches.meta", "label_names"
    elif os.path.exists(os.path.join(root, "meta")):
        variant, label_key = "cifar100", f"{label_kind}_labels"
        num_classes = 100 if label_kind == "fine" else 20
        files = [split]
        meta_name, names_key = "meta", f"{label_kind}_label_names"
    else:
        raise SourceError(f"{root!r} has neither batches.meta (CIFAR-10) nor meta (CIFAR-100)")
    xs, ys = [], []
    for name in files:
        path = os.path.join(root, name)
        batch = _load(path)
        data, labels = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise SourceError(f"{path!r}: 'data' must be uint8 of shape (N, 3072)")
        if not isinstance(labels, list) or len(labels) != data.shape[0]:
            raise SourceError(f"{path!r}: {label_key!r} must be a list with one label per row of 'data'")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(labels))
    meta = _load(os.path.join(root, meta_name))
    x = np.ascontiguousarray(np.concatenate(xs))
    desc = {
        "kind": "cifar",
        "variant": variant,
        "split": split,
        "root": os.path.abspath(root),
        "label_names": _names(meta.get(names_key, [])),
    }
    if variant == "cifar100":
        desc["label_kind"] = label_kind
    return ArraySource(
        x,
        np.concatenate(ys),
        num_classes=num_classes,
        name="x",
        tar_encoding=tar_encoding,
        kind="cifar",
        description=desc,
    )
