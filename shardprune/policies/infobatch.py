"""InfoBatch (Qin et al., ICLR 2024): prune a random part of the well-learned samples.

The official rule (NUS-HPC-AI-Lab/InfoBatch ``infobatch.py``, ``InfoBatch.prune``):

* score = the sample's latest training loss (stale for samples pruned since);
* ``m`` = mean score; well-learned set ``W = {i : s_i < m}`` (strict);
* keep a uniform subset of ``W`` of exactly ``int(keep_ratio * |W|)`` samples, without
  replacement, ``keep_ratio = min(1, max(0.1, 1 - r))``; everything outside ``W`` is kept;
* kept well-learned samples get a larger weight; everything else weight 1;
* annealing: epochs ``e >= delta * num_epochs`` read all data with weight 1.

Where shardprune differs, on purpose (docs/ALGORITHMS.md lists the official defects):

* "All scores" means all *seen* samples: a sample never trained on has no loss, is
  excluded from the mean and from ``W``, and is always kept with weight 1. The official
  code instead starts every score at 3.0, which assumes cross-entropy's scale.
* The weight of a kept well-learned sample is ``|W| / k`` (``weight="exact"``), which
  makes the weighted sum unbiased for the exact count ``k`` kept; the official
  ``1 / keep_ratio`` is available as ``weight="official"``. They are equal whenever
  ``keep_ratio * |W|`` is an integer.
* Randomness comes from a Philox stream keyed by the user's seed and the epoch, not from
  numpy's global RNG reseeded with the epoch number.
* The annealing test is an exact comparison, so weights are 1 in every annealing epoch
  even when ``num_epochs * delta`` is not an integer; weights are computed afresh every
  epoch, never reset by a float-equality check.
"""

from __future__ import annotations

import numpy as np

from shardprune.policies.decision import (
    DEFAULT_DELTA,
    DEFAULT_PRUNE_RATIO,
    EpochDecision,
    PolicyBase,
    check_ratio_delta,
    choose_mask,
    pruning_decision,
)
from shardprune.policies.rng import PURPOSE_INFOBATCH, philox
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.validate import check_choice

WEIGHT_MODES = ("exact", "official")


class InfoBatch(PolicyBase):
    """InfoBatch's keep rule on the latest losses.

    Args:
        prune_ratio: r, the fraction of the well-learned set pruned, in [0, 0.9]
            (the official code clamps the keep ratio at 0.1). Default 0.5.
        delta: Annealing start as a fraction of ``num_epochs``, in (0, 1]. Default 0.875.
        weight: ``"exact"`` (default, ``|W|/k``) or ``"official"`` (``1/(1-r)``).
    """

    name = "infobatch"
    annealing_info = {"threshold": float("nan"), "well_learned": 0}

    def __init__(self, prune_ratio: float = DEFAULT_PRUNE_RATIO, delta: float = DEFAULT_DELTA, weight: str = "exact") -> None:
        prune_ratio, delta = check_ratio_delta(
            prune_ratio,
            delta,
            "infobatch",
            0.9,
            high_open=False,
            why="InfoBatch keeps at least 10% of the well-learned samples (as the official code)",
        )
        weight = check_choice("weight", weight, WEIGHT_MODES)
        super().__init__(prune_ratio=prune_ratio, delta=delta, weight=weight)
        self.keep_ratio = min(1.0, max(0.1, 1.0 - prune_ratio))

    def plan(self, snapshot: ScoreSnapshot, epoch: int, seed: int) -> EpochDecision:
        n = len(snapshot)
        seen = snapshot.seen
        scores = snapshot.loss
        n_seen = int(np.count_nonzero(seen))
        # float64 accumulation: a float32 running sum drifts at 1e8 samples.
        threshold = float(np.sum(scores, where=seen, dtype=np.float64) / n_seen) if n_seen else float("nan")
        well = seen & (scores < threshold) if n_seen else np.zeros(n, dtype=bool)
        w_idx = np.flatnonzero(well)
        n_well = len(w_idx)
        k = int(self.keep_ratio * n_well)
        picked = w_idx[choose_mask(philox(seed, PURPOSE_INFOBATCH, epoch), n_well, k)]
        keep = ~well
        keep[picked] = True
        weight = (n_well / k if self.params["weight"] == "exact" else 1.0 / self.keep_ratio) if k else 1.0
        weights = np.ones(n, dtype=np.float32)
        weights[picked] = weight
        keep_prob = np.ones(n, dtype=np.float32)
        keep_prob[w_idx] = k / n_well if n_well else 1.0
        return pruning_decision(
            keep,
            weights,
            keep_prob,
            threshold=threshold,
            seen=n_seen,
            well_learned=n_well,
            kept_well_learned=k,
            weight=float(weight),
            official_weight=1.0 / self.keep_ratio,
            pruned_fraction=(n_well - k) / n,
            # Unbiased iff every kept well-learned sample stands for |W|/k of them. Not so
            # when floor((1 - r)|W|) = 0 < |W| (all of W dropped, as the official code does),
            # nor for weight="official" when (1 - r)|W| is not an integer.
            unbiased=n_well == 0 or (k > 0 and abs(weight * k - n_well) <= 1e-9 * n_well),
        )
