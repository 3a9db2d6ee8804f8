"""The one call a training step makes: weight the per-sample loss and report it to the store.

The weighting has two modes (:data:`WEIGHT_MODES`). Pruning policies give each kept sample
a weight ``w_i = 1 / p_i`` so that the weighted sum over an epoch is an unbiased estimate
of the full epoch's. Applied as ``mean(w * l)`` ("unbiased"), that also multiplies each SGD
step by the batch's mean weight, which at the learning rate tuned for full training can
diverge; ``sum(w * l) / sum(w)`` ("normalized", the default) keeps the weights' relative
emphasis within a batch and full training's step scale.

Ids travel inside the batch, so reports go to the right samples even when the loader
prefetches batches ahead (the official InfoBatch credits "the batch most recently
fetched", which is wrong under Accelerate or the HF Trainer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch

from shardprune.errors import ConfigError
from shardprune.validate import check_choice

__all__ = ["DEFAULT_WEIGHT_MODE", "WEIGHT_MODES", "ScoreSink", "apply_weights", "weighted_loss"]


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


#: How :func:`weighted_loss` applies the pruning weights (see README "Weights and the step size").
#: ``"normalized"``: ``sum(w * l) / sum(w)`` per batch, a convex combination of the per-sample
#: losses, so the gradient has the scale of full training and the learning rate tuned for full
#: training stays safe under SGD. ``"unbiased"``: ``mean(w * l)``, whose summed gradient over an
#: epoch is an unbiased estimate of full training's, at the price of a step scaled by the batch's
#: mean weight (up to ``1 / (1 - r)`` or ``1 / p_min``), which SGD does not cancel.
WEIGHT_MODES: tuple[str, ...] = ("normalized", "unbiased")
#: Chosen by measurement with SGD and Adam (benchmarks/results/training.md).
DEFAULT_WEIGHT_MODE = "normalized"


def weighted_loss(
    batch: Mapping[str, Any],
    per_sample_loss: torch.Tensor,
    store: ScoreSink | None,
    *,
    mode: str = DEFAULT_WEIGHT_MODE,
) -> torch.Tensor:
    """Return the batch's weighted loss and send the unmixed samples' losses to ``store``.

    Args:
        batch: The loader's batch: ``"ids"`` (int64 tensor), ``"epoch"`` (int, passed on to
            ``store.update(..., epoch=)``; absent means the store's own), ``"weights"`` (float tensor;
            absent means weight 1) and optionally ``"mixed"`` (bool tensor, True where the
            sample was Mixup-blended; its loss is not the sample's own and is not reported,
            only counted in ``store.stats["skipped_mixed"]``). Keep ``"mixed"`` on the CPU:
            a CUDA mask forces a device sync here.
        per_sample_loss: Loss per sample, shape ``[B]`` (``reduction="none"``).
        store: Where to report, or None to only weight.
        mode: One of :data:`WEIGHT_MODES`. ``"normalized"`` (default) returns
            ``sum(w * l) / sum(w)``: the step keeps full training's scale whatever the
            weights. ``"unbiased"`` returns InfoBatch's ``mean(w * l)``: unbiased over the
            policy's randomness, with a step scaled by the batch's mean weight.

    Returns:
        The scalar loss to backpropagate.

    Raises:
        ConfigError: if the batch has no ids, shapes disagree, or ``mode`` is unknown.
    """
    mode = check_choice("mode", mode, WEIGHT_MODES)
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
    loss = apply_weights(per_sample_loss, batch.get("weights"), mode)
    if store is not None:
        _report(batch, ids, per_sample_loss.detach(), store)
    return loss


def apply_weights(per_sample_loss: torch.Tensor, weights: Any, mode: str) -> torch.Tensor:
    """The weighted scalar loss of one batch under ``mode`` (no weights: the plain mean)."""
    if weights is None:
        return per_sample_loss.mean()
    w = torch.as_tensor(weights)
    if w.shape != per_sample_loss.shape:
        raise ConfigError(f"batch weights have shape {tuple(w.shape)}, loss has {tuple(per_sample_loss.shape)}")
    if mode == "normalized":
        # Normalise in float32 (or wider) before casting to the loss dtype: a half-precision sum of
        # w * l can overflow where the weighted mean cannot. The clamp makes an empty
        # batch (sum(w) = 0) give 0 rather than 0 / 0 = NaN.
        calc = torch.promote_types(torch.promote_types(w.dtype, per_sample_loss.dtype), torch.float32)
        wide = w.to(dtype=calc)
        w = wide / wide.sum().clamp_min(torch.finfo(calc).tiny)
        w = w.to(device=per_sample_loss.device, dtype=per_sample_loss.dtype, non_blocking=True)
        return (w * per_sample_loss).sum()
    w = w.to(device=per_sample_loss.device, dtype=per_sample_loss.dtype, non_blocking=True)
    return (w * per_sample_loss).mean()


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
