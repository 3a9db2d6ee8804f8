"""The score store's options, checked once at construction."""

from __future__ import annotations

from dataclasses import dataclass

from shardprune.errors import ConfigError
from shardprune.scores.update import INVALID_MODES
from shardprune.validate import check_bool, check_choice, check_float, check_int

#: Largest chunk: 64M samples (1.25 GiB of columns) per zarr chunk.
MAX_CHUNK_SIZE = 1 << 26


@dataclass(frozen=True)
class StoreOptions:
    """Validated :class:`~shardprune.scores.store.ScoreStore` arguments (see its docstring)."""

    num_samples: int
    dataset_fingerprint: str
    ema_beta: float
    flush_interval_s: float | None
    invalid: str
    writer: bool
    chunk_size: int

    @classmethod
    def check(
        cls,
        num_samples: object,
        dataset_fingerprint: object,
        ema_beta: object,
        flush_interval_s: object,
        invalid: object,
        writer: object,
        chunk_size: object,
    ) -> "StoreOptions":
        """Check every argument; raise :class:`ConfigError` naming the value, range and fix."""
        if not isinstance(dataset_fingerprint, str) or not dataset_fingerprint:
            raise ConfigError(
                f"dataset_fingerprint={dataset_fingerprint!r} must be a non-empty string; pass dataset.fingerprint"
            )
        interval = None
        if flush_interval_s is not None:
            interval = check_float(
                "flush_interval_s", flush_interval_s, 0.0, low_open=True, fix="or None to flush only on demand"
            )
        return cls(
            num_samples=check_int("num_samples", num_samples, 1, fix="the dataset's sample count, len(dataset)"),
            dataset_fingerprint=dataset_fingerprint,
            ema_beta=check_float("ema_beta", ema_beta, 0.0, 1.0, high_open=True, fix="pass e.g. ema_beta=0.9"),
            flush_interval_s=interval,
            invalid=check_choice("invalid", invalid, INVALID_MODES),
            writer=check_bool("writer", writer),
            chunk_size=check_int("chunk_size", chunk_size, 1, MAX_CHUNK_SIZE, fix="pass e.g. 65536"),
        )
