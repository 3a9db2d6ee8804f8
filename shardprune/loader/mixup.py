"""In-flight Mixup with the policy's probabilities (SwDPP's probabilistic Mixup).

For batch ``b`` of epoch ``e`` one Philox stream keyed by the seed with counter
``(PURPOSE_MIXUP, e, b)`` draws, per batch position, whether the sample is mixed
(probability ``prob``), its partner and ``lambda ~ Beta(alpha, alpha)``. The batch
index is a plan position (``b = position // batch_size``), so the draws are a pure
function of ``(seed, epoch, position)`` and a resumed epoch reproduces them exactly.

Partners are other *eligible* samples of the same batch: kept, non-pad samples, so
Mixup never reads a pruned sample's bytes. A mixed sample ``a`` with partner ``p``
gets, from the unblended partner:

* ``x_a = lambda * x_a + (1 - lambda) * x_p`` for every stacked *floating-point* field
  (integer fields such as uint8 images are never blended: convert them with a
  ``transform`` first; labels are never blended either);
* ``target_a = lambda * onehot(y_a) + (1 - lambda) * onehot(y_p)``;
* ``weight_a = lambda * w_a + (1 - lambda) * w_p``.

Batch fields added: ``mixed`` (bool), ``mix_partner`` (int64 index within the batch,
-1 when unmixed), ``mix_lambda`` (float32, 1 when unmixed) and, when ``prob > 0``,
``target`` (float32 soft targets, ``num_classes`` wide, when the dataset has classes).
"""

from __future__ import annotations

import numpy as np
import torch

from shardprune.errors import ConfigError
from shardprune.loader.collate import Batch
from shardprune.policies.rng import PURPOSE_MIXUP, philox


def mixup_draws(
    eligible: np.ndarray, *, seed: int, epoch: int, batch_index: int, prob: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``(mixed, partner, lambda)`` for one batch.

    Args:
        eligible: bool[B], samples that may mix or be a partner.
        seed: Philox key.
        epoch: Epoch number.
        batch_index: Batch number within the epoch's plan.
        prob: Probability that an eligible sample is mixed, in [0, 1].
        alpha: Beta distribution parameter (> 0).

    Returns:
        ``mixed`` bool[B], ``partner`` int64[B] (-1 if unmixed), ``lam`` float32[B].
    """
    n = eligible.shape[0]
    gen = philox(seed, PURPOSE_MIXUP, epoch, batch_index)
    u = np.asarray(gen.random(n), dtype=np.float64)
    v = np.asarray(gen.random(n), dtype=np.float64)
    lam_draw = np.asarray(gen.beta(alpha, alpha, size=n), dtype=np.float64) if alpha > 0 else np.ones(n)
    elig = np.flatnonzero(eligible)
    m = elig.size
    mixed = np.zeros(n, dtype=bool)
    partner = np.full(n, -1, dtype=np.int64)
    lam = np.ones(n, dtype=np.float32)
    if m < 2 or prob <= 0:
        return mixed, partner, lam
    for k, i in enumerate(elig.tolist()):
        if u[i] < prob:
            j = int(elig[(k + 1 + int(v[i] * (m - 1))) % m])
            mixed[i] = True
            partner[i] = j
            lam[i] = np.float32(lam_draw[i])
    return mixed, partner, lam


#: Batch keys that are never blended: bookkeeping, labels and the Mixup fields themselves.
NOT_BLENDED = frozenset({"ids", "label", "weights", "mixed", "mix_partner", "mix_lambda", "target"})


def blendable_fields(batch: Batch) -> list[str]:
    """Keys of ``batch`` that Mixup blends: stacked floating-point tensors (sorted).

    Integer fields (uint8 images, token ids), ragged lists, labels and bookkeeping
    fields are never blended; give the loader a ``transform`` that converts images to
    float if they should be.
    """
    return sorted(
        k
        for k, v in batch.items()
        if k not in NOT_BLENDED and isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 1
    )


def apply_mixup(
    batch: Batch,
    *,
    eligible: np.ndarray,
    seed: int,
    epoch: int,
    batch_index: int,
    prob: float,
    alpha: float,
    num_classes: int | None,
) -> Batch:
    """Blend the float fields of ``batch`` and add the Mixup fields.

    Every stacked floating-point tensor field (see :func:`blendable_fields`) is blended
    with the partner's unblended value; labels stay as they are, and ``mixed``,
    ``mix_partner``, ``mix_lambda`` (and ``target`` when ``num_classes`` is known) tell
    the loss how to mix targets. The blended weight is ``lam * w_a + (1 - lam) * w_p``.

    Raises:
        ConfigError: ``prob`` is outside [0, 1], or Mixup is on and the batch has no
            floating-point field to blend.
    """
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"mixup_prob={prob} is outside [0, 1]")
    mixed, partner, lam = mixup_draws(
        eligible, seed=seed, epoch=epoch, batch_index=batch_index, prob=prob, alpha=alpha
    )
    batch["mixed"] = torch.from_numpy(mixed)
    batch["mix_partner"] = torch.from_numpy(partner)
    batch["mix_lambda"] = torch.from_numpy(lam)
    if prob <= 0:
        return batch
    fields = blendable_fields(batch)
    if not fields:
        kinds = {k: (str(v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__) for k, v in batch.items()}
        raise ConfigError(
            f"the policy asks for Mixup (mixup_prob={prob}) but the batch has no floating-point field to "
            f"blend (fields: {kinds}); pass a transform that converts inputs to float (e.g. images to "
            "float32 of one size), or mixup=False to the loader"
        )
    if num_classes is not None and isinstance(batch.get("label"), torch.Tensor):
        labels = batch["label"]
        target = torch.zeros((labels.shape[0], num_classes), dtype=torch.float32)
        valid = (labels >= 0) & (labels < num_classes)
        target[valid, labels[valid]] = 1.0
        batch["target"] = target
    if not mixed.any():
        return batch
    idx = torch.from_numpy(np.flatnonzero(mixed))
    part = torch.from_numpy(partner[mixed])
    lam_t = torch.from_numpy(lam[mixed])
    for name in fields + (["target"] if "target" in batch else []):
        x = batch[name]
        shape = (-1,) + (1,) * (x.dim() - 1)
        lam_x = lam_t.to(x.dtype).view(shape)
        x_new = x.clone()
        x_new[idx] = lam_x * x[idx] + (1 - lam_x) * x[part]
        batch[name] = x_new
    w = batch["weights"]
    w_new = w.clone()
    w_new[idx] = lam_t * w[idx] + (1 - lam_t) * w[part]
    batch["weights"] = w_new
    return batch
