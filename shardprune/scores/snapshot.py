"""A frozen copy of every sample's scores: what one epoch is planned from.

A :class:`ScoreSnapshot` is plain numpy data. Its :attr:`~ScoreSnapshot.fingerprint`
is a BLAKE2b digest of the column bytes (little-endian, with dtype and length), so two
processes holding the same scores get the same fingerprint, and a checkpoint can record
which scores an epoch was planned from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from shardprune.errors import ConfigError

#: Column names and dtypes, in fingerprint order. Values for a never-seen sample
#: are the fill values; they are also the zarr fill values of the stored arrays.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("loss", "<f4"),
    ("loss_ema", "<f4"),
    ("delta_ema", "<f4"),
    ("visits", "<i4"),
    ("last_epoch", "<i4"),
)
FILL: dict[str, float | int] = {
    "loss": float("nan"),
    "loss_ema": float("nan"),
    "delta_ema": 0.0,
    "visits": 0,
    "last_epoch": -1,
}


def fresh_columns(n: int) -> dict[str, np.ndarray]:
    """Columns for ``n`` never-seen samples."""
    if n < 0:
        raise ConfigError(f"num_samples={n} must be >= 0")
    return {name: np.full(n, FILL[name], dtype=dtype) for name, dtype in COLUMNS}


def fingerprint_columns(columns: dict[str, np.ndarray]) -> str:
    """Hex BLAKE2b-128 digest of the columns, independent of process and platform."""
    h = hashlib.blake2b(digest_size=16)
    for name, dtype in COLUMNS:
        col = np.ascontiguousarray(columns[name], dtype=dtype)
        h.update(f"{name}:{dtype}:{col.shape[0]};".encode())
        h.update(col.data)
    return h.hexdigest()


@dataclass(frozen=True)
class ScoreSnapshot:
    """Per-sample scores frozen at one moment.

    Attributes:
        loss: float32[N], the latest training loss; NaN where never seen.
        loss_ema: float32[N], EMA of the loss (first visit sets it); NaN where never seen.
        delta_ema: float32[N], EMA of ``|loss change|`` between consecutive visits;
            0 where a sample has fewer than 2 visits.
        visits: int32[N], number of applied loss reports.
        last_epoch: int32[N], epoch of the latest report, -1 where never seen.
        fingerprint: hex digest of the five columns (see :func:`fingerprint_columns`).
    """

    loss: np.ndarray
    loss_ema: np.ndarray
    delta_ema: np.ndarray
    visits: np.ndarray
    last_epoch: np.ndarray
    fingerprint: str

    def __post_init__(self) -> None:
        n = self.loss.shape[0]
        for name, dtype in COLUMNS:
            col = getattr(self, name)
            if not isinstance(col, np.ndarray) or col.ndim != 1 or col.shape[0] != n:
                raise ConfigError(f"snapshot column {name!r} must be a 1-D array of length {n}")
            if col.dtype != np.dtype(dtype):
                raise ConfigError(f"snapshot column {name!r} has dtype {col.dtype}, expected {np.dtype(dtype)}")

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], *, copy: bool = True) -> "ScoreSnapshot":
        """Freeze ``columns`` (copied unless ``copy=False``) and fingerprint them."""
        frozen: dict[str, np.ndarray] = {}
        for name, dtype in COLUMNS:
            col = np.array(columns[name], dtype=dtype, copy=True) if copy else np.asarray(columns[name], dtype=dtype)
            col.flags.writeable = False
            frozen[name] = col
        return cls(fingerprint=fingerprint_columns(frozen), **frozen)

    @classmethod
    def fresh(cls, n: int) -> "ScoreSnapshot":
        """A snapshot of ``n`` samples that were never seen."""
        return cls.from_columns(fresh_columns(n), copy=False)

    @property
    def seen(self) -> np.ndarray:
        """bool[N]: True where the sample has at least one applied loss report."""
        return np.asarray(self.visits > 0)

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        """The five columns by name (read-only views)."""
        return {name: getattr(self, name) for name, _ in COLUMNS}
