"""In-flight Mixup with the policy's probabilities (SwDPP's probabilistic Mixup).

For batch ``b`` of epoch ``e`` one Philox stream keyed by the seed with counter
``(PURPOSE_MIXUP, e, b)`` draws, per batch position, whether the sample is mixed
(probability ``prob``), its partner and ``lambda ~ Beta(alpha, alpha)``. The batch
index is a plan position (``b = position // batch_size``), so the draws are a pure
function of ``(seed, epoch, position)`` and a resumed epoch reproduces them exactly.

Partners are other *eligible* samples of the same batch: kept, non-pad samples, so
Mixup never reads a pruned sample's bytes. A mixed sample ``a`` with partner ``p``
gets, from the unblended partner:

* ``x_a = lambda * x_a + (1 - lambda) * x_p`` (the input field becomes float32 for the
  whole epoch whenever ``prob > 0``, so batch dtypes do not change within an epoch);
* ``target_a = lambda * onehot(y_a) + (1 - lambda) * onehot(y_p)``;
* ``weight_a = lambda * w_a + (1 - lambda) * w_p``.

Batch fields added: ``mixed`` (bool), ``mix_partner`` (int64 index within the batch,
-1 when unmixed), ``mix_lambda`` (float32, 1 when unmixed) and, when ``prob > 0``,
``target`` (float32 soft targets, ``num_classes`` wide).
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


def apply_mixup(
    batch: Batch,
    *,
    field: str | None,
    eligible: np.ndarray,
    seed: int,
    epoch: int,
    batch_index: int,
    prob: float,
    alpha: float,
    num_classes: int | None,
) -> Batch:
    """Blend ``batch`` in place of its input field and add the Mixup fields.

    Raises:
        ConfigError: Mixup is on but the input field is missing or not a stacked tensor,
            or the dataset has no ``num_classes``.
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
    if num_classes is None:
        raise ConfigError("Mixup is on (mixup_prob > 0) but the dataset header has no num_classes")
    if field is None or not isinstance(batch.get(field), torch.Tensor):
        raise ConfigError(
            f"Mixup needs the input field {field!r} as a stacked tensor; images of different sizes "
            "need a transform that resizes them, and mixup_field= names the field to blend"
        )
    x = batch[field].to(torch.float32)
    labels = batch["label"]
    target = torch.zeros((labels.shape[0], num_classes), dtype=torch.float32)
    valid = labels >= 0
    target[valid, labels[valid]] = 1.0
    if mixed.any():
        idx = torch.from_numpy(np.flatnonzero(mixed))
        part = torch.from_numpy(partner[mixed])
        lam_t = torch.from_numpy(lam[mixed])
        shape = (-1,) + (1,) * (x.dim() - 1)
        x_new = x.clone()
        x_new[idx] = lam_t.view(shape) * x[idx] + (1 - lam_t.view(shape)) * x[part]
        x = x_new
        t_new = target.clone()
        t_new[idx] = lam_t[:, None] * target[idx] + (1 - lam_t[:, None]) * target[part]
        target = t_new
        w = batch["weights"]
        w_new = w.clone()
        w_new[idx] = lam_t * w[idx] + (1 - lam_t) * w[part]
        batch["weights"] = w_new
    batch[field] = x
    batch["target"] = target
    return batch
