"""Arrays from ``.npz`` or ``.npy`` files: samples on axis 0, optional integer labels.

Files are loaded with ``allow_pickle=False``: an object array is refused, never unpickled.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from shardprune.errors import SourceError
from shardprune.sources.base import ArraySource


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as exc:
        raise SourceError(f"{path!r} does not exist; pass an existing .npy file") from exc
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path!r} is not a readable .npy array without pickles ({exc})") from exc


def load_arrays(
    path: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    x_key: str = "x",
    y_key: str | None = "y",
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Load samples and labels; return ``(x, y, description)``.

    Args:
        path: An ``.npz`` archive (samples under ``x_key``, labels under ``y_key``) or an
            ``.npy`` file of samples.
        labels: For ``.npy`` input, an ``.npy`` file of labels (None: unlabelled).
        x_key: Samples' name in the ``.npz`` (default ``"x"``).
        y_key: Labels' name in the ``.npz`` (default ``"y"``; None or absent: unlabelled).

    Raises:
        SourceError: a file is missing or unreadable, or a key is absent.
    """
    path = os.fspath(path)
    desc: dict[str, Any] = {"kind": "arrays", "path": os.path.abspath(path)}
    if path.endswith(".npz"):
        if labels is not None:
            raise SourceError(f"{path!r} is an .npz; name its label array with y_key instead of a labels file")
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = sorted(npz.files)
                if x_key not in keys:
                    raise SourceError(f"{path!r} has no array {x_key!r} (it has {keys}); pass --x-key")
                x = npz[x_key]
                y = npz[y_key] if y_key is not None and y_key in keys else None
        except FileNotFoundError as exc:
            raise SourceError(f"{path!r} does not exist; pass an existing .npz file") from exc
        except (OSError, ValueError) as exc:
            raise SourceError(f"{path!r} is not a readable .npz without pickles ({exc})") from exc
        desc.update(x_key=x_key, y_key=y_key if y is not None else None)
        return x, y, desc
    if not path.endswith(".npy"):
        raise SourceError(f"{path!r} is neither .npz nor .npy; pass an array file")
    x = _load_npy(path)
    y = None
    if labels is not None:
        y = np.asarray(_load_npy(os.fspath(labels)))
        desc["labels"] = os.path.abspath(os.fspath(labels))
    return x, y, desc


def arrays_source(
    path: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    x_key: str = "x",
    y_key: str | None = "y",
    num_classes: int | None = None,
    tar_encoding: str = "npy",
    name: str = "x",
) -> ArraySource:
    """An :class:`ArraySource` over array files; see :func:`load_arrays` for the arguments."""
    x, y, desc = load_arrays(path, labels=labels, x_key=x_key, y_key=y_key)
    return ArraySource(
        x, y, num_classes=num_classes, name=name, tar_encoding=tar_encoding, kind="arrays", description=desc
    )
