"""The one call a training step makes: weight the per-sample loss and report it to the store.

Ids travel inside the batch, so reports go to the right samples even when the loader
prefetches batches ahead (the official InfoBatch credits "the batch most recently
fetched", which is wrong under Accelerate or the HF Trainer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from shardprune.errors import ConfigError

__all__ = ["ScoreSink", "weighted_loss"]


@runtime_checkable
class ScoreSink(Protocol):
    """Where :func:`weighted_loss` reports losses.

    :class:`shardprune.scores.ScoreStore` is one; a distributed wrapper that gathers the
    reports of every rank before storing them is another.
    """

    def update(self, ids: Any, losses: Any, *, epoch: int | None = None) -> None:
        """Record one loss per id (``ids`` and ``losses`` have the same length), made in ``epoch``."""
        ...

    def record_skipped(self, count: int, reason: str) -> None:
        """Count ``count`` samples whose loss was not reported, because of ``reason``."""
        ...


def weighted_loss(batch: Mapping[str, Any], per_sample_loss: torch.Tensor, store: ScoreSink | None) -> torch.Tensor:
    """Return ``mean(weights * loss)`` and send the unmixed samples' losses to ``store``.

    Args:
        batch: The loader's batch: ``"ids"`` (int64 tensor), ``"epoch"`` (int, passed on to
            ``store.update(..., epoch=)``; absent means the store's own), ``"weights"`` (float tensor;
            absent means weight 1) and optionally ``"mixed"`` (bool tensor, True where the
            sample was Mixup-blended; its loss is not the sample's own and is not reported,
            only counted in ``store.stats["skipped_mixed"]``). Keep ``"mixed"`` on the CPU:
            a CUDA mask forces a device sync here.
        per_sample_loss: Loss per sample, shape ``[B]`` (``reduction="none"``).
        store: Where to report, or None to only weight.

    Returns:
        The scalar loss to backpropagate: InfoBatch's plain mean of ``w_i * l_i`` over the
        batch (not normalised by the weights).

    Raises:
        ConfigError: if the batch has no ids, or shapes disagree.
    """
    if not isinstance(per_sample_loss, torch.Tensor) or per_sample_loss.ndim != 1:
        shape = tuple(per_sample_loss.shape) if isinstance(per_sample_loss, torch.Tensor) else type(per_sample_loss)
        raise ConfigError(
            f"per_sample_loss must be a 1-D tensor (one loss per sample), got {shape}; "
            "compute it with reduction='none'"
        )
    if "ids" not in batch:
        raise ConfigError("the batch has no 'ids' field; use the shardprune loader, whose batches carry sample ids")
    ids = batch["ids"]
    n = per_sample_loss.shape[0]
    if len(ids) != n:
        raise ConfigError(f"batch has {len(ids)} ids but per_sample_loss has {n} entries; they must match")
    weights = batch.get("weights")
    if weights is None:
        loss = per_sample_loss.mean()
    else:
        w = torch.as_tensor(weights)
        if w.shape != per_sample_loss.shape:
            raise ConfigError(f"batch weights have shape {tuple(w.shape)}, loss has {tuple(per_sample_loss.shape)}")
        w = w.to(device=per_sample_loss.device, dtype=per_sample_loss.dtype, non_blocking=True)
        loss = (w * per_sample_loss).mean()
    if store is not None:
        _report(batch, ids, per_sample_loss.detach(), store)
    return loss


def _report(batch: Mapping[str, Any], ids: Any, losses: torch.Tensor, store: ScoreSink) -> None:
    # The batch says which epoch it belongs to, so no separate store.set_epoch is needed.
    at: dict[str, int] = {} if batch.get("epoch") is None else {"epoch": int(batch["epoch"])}
    mixed = batch.get("mixed")
    if mixed is None:
        store.update(ids, losses, **at)
        return
    mask = torch.as_tensor(mixed, dtype=torch.bool).cpu()
    if mask.shape != losses.shape:
        raise ConfigError(f"batch 'mixed' has shape {tuple(mask.shape)}, loss has {tuple(losses.shape)}")
    n_mixed = int(mask.sum())
    if n_mixed:
        store.record_skipped(n_mixed, "mixed")
    if n_mixed == len(mask):
        return
    if n_mixed == 0:
        store.update(ids, losses, **at)
        return
    keep = torch.nonzero(~mask).squeeze(1)
    ids_t = torch.as_tensor(ids)
    store.update(ids_t[keep.to(ids_t.device)], losses.index_select(0, keep.to(losses.device, non_blocking=True)), **at)
