"""Baselines every pruning policy is compared against: full data and random dynamic pruning.

Random dynamic pruning keeps a uniform random ``K = round((1 - r) N)`` samples per epoch.
Samples never seen are always kept (weight 1) and count against the budget; the rest of
the budget, ``k`` of the ``n`` seen samples, is drawn uniformly without replacement and
weighted ``n / k`` (exact for a fixed count; ``1 / (1 - r)`` when nothing is unseen and
``(1 - r) N`` is an integer). At least one seen sample is kept, so the weighted sum stays
an unbiased estimate of the full sum even when unseen samples fill the budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardprune.policies.decision import (
    DEFAULT_DELTA,
    DEFAULT_PRUNE_RATIO,
    EpochDecision,
    PolicyBase,
    budget,
    check_delta,
    check_ratio_delta,
    choose_mask,
    keep_all,
    pruning_decision,
)
from shardprune.policies.rng import PURPOSE_RANDOM, philox
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.validate import check_float


def seen_budget(n: int, n_seen: int, prune_ratio: float) -> int:
    """How many seen samples fit in the budget once every unseen sample is kept."""
    k = budget(n, prune_ratio) - (n - n_seen)
    return int(min(n_seen, max(k, min(n_seen, 1))))


def split_seen(snapshot: ScoreSnapshot, prune_ratio: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The seen mask, the positions of the seen samples, and :func:`seen_budget` for them."""
    seen = snapshot.seen
    s_idx = np.flatnonzero(seen)
    return seen, s_idx, seen_budget(len(snapshot), len(s_idx), prune_ratio)


def budget_decision(
    keep: np.ndarray,
    weights: np.ndarray,
    keep_prob: np.ndarray,
    *,
    n_seen: int,
    n_kept: int,
    prune_ratio: float,
    **info: Any,
) -> EpochDecision:
    """A budgeted pruning epoch's decision; ``info`` entries go between ``seen`` and ``pruned_fraction``."""
    n = len(keep)
    return pruning_decision(
        keep,
        weights,
        keep_prob,
        budget=budget(n, prune_ratio),
        seen=n_seen,
        **info,
        pruned_fraction=1.0 - n_kept / n,
    )


class Full(PolicyBase):
    """No pruning: every sample, weight 1.

    Args:
        prune_ratio: Accepted for a uniform interface; must be 0.
        delta: Accepted for a uniform interface; unused.
    """

    name = "full"

    def __init__(self, prune_ratio: float = 0.0, delta: float = DEFAULT_DELTA) -> None:
        check_float(
            "prune_ratio", prune_ratio, 0.0, 0.0, fix="policy 'full' never prunes; use policy 'random' to prune at random"
        )
        delta = check_delta(delta)
        super().__init__(prune_ratio=0.0, delta=delta)

    def plan(self, snapshot: ScoreSnapshot, epoch: int, seed: int) -> EpochDecision:
        return keep_all(len(snapshot), annealing=False)


class RandomPruning(PolicyBase):
    """Uniform random dynamic pruning at prune ratio r.

    Args:
        prune_ratio: Fraction of the dataset pruned per epoch, in [0, 1). Default 0.5
            (:data:`~shardprune.policies.decision.DEFAULT_PRUNE_RATIO`).
        delta: Annealing start as a fraction of ``num_epochs``, in (0, 1]. Default 0.875.
    """

    name = "random"

    def __init__(self, prune_ratio: float = DEFAULT_PRUNE_RATIO, delta: float = DEFAULT_DELTA) -> None:
        prune_ratio, delta = check_ratio_delta(prune_ratio, delta, "random")
        super().__init__(prune_ratio=prune_ratio, delta=delta)

    def plan(self, snapshot: ScoreSnapshot, epoch: int, seed: int) -> EpochDecision:
        n = len(snapshot)
        seen, s_idx, k = split_seen(snapshot, self.params["prune_ratio"])
        n_seen = len(s_idx)
        picked = s_idx[choose_mask(philox(seed, PURPOSE_RANDOM, epoch), n_seen, k)]
        keep = ~seen
        keep[picked] = True
        weights = np.ones(n, dtype=np.float32)
        weights[picked] = n_seen / k if k else 1.0
        keep_prob = np.ones(n, dtype=np.float32)
        keep_prob[s_idx] = k / n_seen if n_seen else 1.0
        kept = int(n - n_seen + k)
        return budget_decision(
            keep, weights, keep_prob, n_seen=n_seen, n_kept=kept, prune_ratio=self.params["prune_ratio"], kept=kept
        )
