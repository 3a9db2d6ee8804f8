"""What one epoch cost: planned samples, pruned samples, bytes read and requests made."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EpochStats:
    """Counters of the current epoch on this rank.

    The planned figures (``samples_*``, ``trimmed``, ``padded``, ``bytes_kept``,
    ``bytes_not_read``) are known after ``set_epoch``; the I/O figures (``bytes_read``,
    ``gap_bytes``, ``requests``) and ``batches`` grow while the epoch is iterated (a
    resumed epoch counts only what it reads after the resume).

    Attributes:
        epoch: The epoch.
        samples_total: N, samples in the dataset.
        samples_planned: Samples this rank yields this epoch (pads included).
        samples_skipped: Samples the policy pruned this epoch (all ranks: never read by anyone).
        trimmed: Kept samples of this rank dropped by ``drop_last`` so ranks have equal batches.
        padded: Pad slots of this rank (repeated samples with weight 0, ``drop_last=False``).
        bytes_kept: Bytes of the samples this rank's plan reads (pads included).
        bytes_read: Bytes requested from storage so far (samples plus merged gaps).
        bytes_not_read: Bytes of the samples the policy pruned (the I/O pruning saved).
        gap_bytes: Bytes read between planned samples and thrown away (``max_gap``).
        requests: Range requests made so far.
        cache_hits: Samples served from the local cache (``cache_dir``) so far; they are
            not in ``bytes_read`` or ``requests``, which count what went to storage.
        cache_bytes: Bytes of those samples.
        batches: Batches yielded so far.
    """

    epoch: int = 0
    samples_total: int = 0
    samples_planned: int = 0
    samples_skipped: int = 0
    trimmed: int = 0
    padded: int = 0
    bytes_kept: int = 0
    bytes_read: int = 0
    bytes_not_read: int = 0
    gap_bytes: int = 0
    requests: int = 0
    cache_hits: int = 0
    cache_bytes: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-able dict."""
        return asdict(self)


def run_totals(epochs: Iterable[EpochStats]) -> dict[str, int]:
    """Every counter summed over ``epochs`` (e.g. each epoch's ``loader.epoch_stats`` kept in a list).

    ``epoch`` becomes ``epochs``, the number of epochs summed; ``samples_total`` sums to
    the sample visits a full-data run would make, so ``bytes_not_read / (bytes_kept +
    bytes_not_read)`` is the run's I/O saving.
    """
    totals = {name: 0 for name in EpochStats.__dataclass_fields__ if name != "epoch"}
    totals["epochs"] = 0
    for stats in epochs:
        totals["epochs"] += 1
        for name, value in stats.as_dict().items():
            if name != "epoch":
                totals[name] += int(value)
    return totals
