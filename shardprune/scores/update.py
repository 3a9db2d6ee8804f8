"""The score update rule: validate a batch of (id, loss) reports and fold it into the columns.

Pure numpy on the in-memory columns; the store calls it from its background thread
(``ScoreStore.update``) or directly (``ScoreStore.apply``).

Per report of loss ``l`` for sample ``i`` at epoch ``e``, with EMA momentum ``beta``:

* first visit: ``loss = loss_ema = l``, ``delta_ema = 0``;
* second visit: ``delta_ema = |l - loss_prev|``;
* later visits: ``delta_ema = beta * delta_ema + (1 - beta) * |l - loss_prev|``;
* every visit after the first: ``loss_ema = beta * loss_ema + (1 - beta) * l``;
* ``loss = l``, ``visits += 1``, ``last_epoch = e``.

A sample reported twice in one batch is folded twice, in report order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardprune.errors import InvalidLossError

INVALID_MODES = ("raise", "skip")


@dataclass
class CleanBatch:
    """A validated batch: int64 ids in range, finite float32 losses, and what was dropped."""

    ids: np.ndarray
    losses: np.ndarray
    epoch: int
    skipped_nonfinite: int = 0
    skipped_out_of_range: int = 0


def check_lengths(ids: np.ndarray, losses: np.ndarray) -> None:
    """Raise unless ``ids`` and ``losses`` are 1-D of equal length (checked in every mode)."""
    if ids.ndim != 1 or losses.ndim != 1:
        raise InvalidLossError(
            f"ids and losses must be 1-D (one per sample), got shapes {tuple(ids.shape)} and "
            f"{tuple(losses.shape)}; pass the per-sample loss (reduction='none'), not the batch mean"
        )
    if ids.shape[0] != losses.shape[0]:
        raise InvalidLossError(
            f"length mismatch: {ids.shape[0]} ids but {losses.shape[0]} losses; "
            "pass one loss per id (reduction='none')"
        )


def validate(ids: np.ndarray, losses: np.ndarray, epoch: int, num_samples: int, invalid: str) -> CleanBatch:
    """Check one batch; raise (``invalid="raise"``) or drop and count (``"skip"``) bad entries.

    Args:
        ids: int64[B] sample ids.
        losses: float32[B] per-sample losses.
        epoch: Epoch the losses belong to (>= 0).
        num_samples: Valid ids are ``0..num_samples-1``.
        invalid: ``"raise"`` or ``"skip"``.

    Raises:
        InvalidLossError: on a length mismatch (always), or on NaN/inf losses or
            out-of-range ids when ``invalid="raise"``; nothing of the batch is applied.
    """
    check_lengths(ids, losses)
    if epoch < 0:
        raise InvalidLossError(f"epoch={epoch} must be >= 0; call store.set_epoch(epoch) or pass epoch=")
    finite = np.isfinite(losses)
    in_range = (ids >= 0) & (ids < num_samples)
    ok = finite & in_range
    if ok.all():
        return CleanBatch(ids, losses, epoch)
    if invalid == "raise":
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise InvalidLossError(
                f"loss {float(losses[bad])} for sample id {int(ids[bad])} (batch position {bad}) is not finite; "
                f"{int((~finite).sum())} of {len(losses)} losses in the batch are NaN/inf. Nothing was applied. "
                "Fix the loss, or open the store with invalid='skip' to count and drop such reports"
            )
        bad = int(np.flatnonzero(~in_range)[0])
        raise InvalidLossError(
            f"sample id {int(ids[bad])} (batch position {bad}) is outside 0..{num_samples - 1}; "
            "ids must come from the batch's 'ids' field of this dataset. Nothing was applied"
        )
    return CleanBatch(
        ids[ok],
        losses[ok],
        epoch,
        skipped_nonfinite=int((~finite).sum()),
        skipped_out_of_range=int((finite & ~in_range).sum()),
    )


def _occurrence_rounds(ids: np.ndarray) -> list[np.ndarray]:
    """Split positions into rounds so no id repeats within a round, keeping report order."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.ones(len(ids), dtype=bool)
    starts[1:] = sorted_ids[1:] != sorted_ids[:-1]
    if starts.all():
        return [np.arange(len(ids))]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(ids)), 0))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids)) - group_start
    return [np.flatnonzero(rank == k) for k in range(int(rank.max()) + 1)]


def fold(columns: dict[str, np.ndarray], ids: np.ndarray, losses: np.ndarray, epochs: np.ndarray, beta: float) -> None:
    """Apply validated reports to ``columns`` in place (vectorised; duplicates in order)."""
    if len(ids) == 0:
        return
    for pos in _occurrence_rounds(ids):
        _fold_unique(columns, ids[pos], losses[pos], epochs[pos], beta)


def _fold_unique(
    columns: dict[str, np.ndarray], ids: np.ndarray, losses: np.ndarray, epochs: np.ndarray, beta: float
) -> None:
    loss_col = columns["loss"]
    visits = columns["visits"][ids]
    prev = loss_col[ids]
    ema = columns["loss_ema"][ids]
    dema = columns["delta_ema"][ids]
    change = np.abs(losses - prev)
    b = np.float32(beta)
    one_b = np.float32(1.0 - beta)
    first = visits == 0
    new_ema = np.where(first, losses, b * ema + one_b * losses)
    new_dema = np.where(first, np.float32(0.0), np.where(visits == 1, change, b * dema + one_b * change))
    loss_col[ids] = losses
    columns["loss_ema"][ids] = new_ema
    columns["delta_ema"][ids] = new_dema
    columns["visits"][ids] = np.minimum(visits.astype(np.int64) + 1, np.iinfo(np.int32).max).astype(np.int32)
    columns["last_epoch"][ids] = epochs
