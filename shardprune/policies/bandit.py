"""Score-greedy baselines with exploration (Raju et al. 2021): epsilon-greedy and UCB.

Both keep the same number of samples per epoch as random pruning, ``K = round((1-r)N)``.
Unseen samples are always kept (weight 1); of the ``k`` seen samples that still fit, the
top ``round((1 - epsilon) k)`` by score are kept with weight 1 and the remaining
``e = k - top`` are drawn uniformly without replacement from the ``R`` other seen samples
and weighted ``R / e``. Top samples have inclusion probability 1 and the others ``e / R``,
so the weighted sum is an unbiased estimate of the full sum whenever ``e >= 1``
(``epsilon = 0`` is pure greedy: the rest are never visited, and ``info["unbiased"]``
says so). Raju et al. train on the kept samples unweighted; ``reweight=False`` does that.

Scores: epsilon-greedy uses the loss EMA. UCB adds ``c * sigma``; the store keeps the EMA
of ``|loss change|`` between visits rather than a variance, and for independent draws
``E|X1 - X2| = 2 sigma / sqrt(pi)``, so ``sigma = sqrt(pi) / 2 * delta_ema`` (a
reconstruction: the paper keeps a window of past losses).
"""

from __future__ import annotations

import math

import numpy as np

from shardprune.policies.baselines import budget_decision, split_seen
from shardprune.policies.decision import (
    DEFAULT_DELTA,
    DEFAULT_PRUNE_RATIO,
    EpochDecision,
    PolicyBase,
    check_ratio_delta,
    choose_mask,
)
from shardprune.policies.rng import PURPOSE_GREEDY, philox
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.validate import check_bool, check_float

_SIGMA_PER_MEAN_ABS_CHANGE = math.sqrt(math.pi) / 2.0


class _GreedyBase(PolicyBase):
    def _setup(self, prune_ratio: float, delta: float, epsilon: float, reweight: bool, **extra: float) -> None:
        prune_ratio, delta = check_ratio_delta(prune_ratio, delta, self.name)
        epsilon = check_float("epsilon", epsilon, 0.0, 1.0)
        reweight = check_bool("reweight", reweight)
        PolicyBase.__init__(self, prune_ratio=prune_ratio, delta=delta, epsilon=epsilon, reweight=reweight, **extra)

    def score(self, snapshot: ScoreSnapshot, s_idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def plan(self, snapshot: ScoreSnapshot, epoch: int, seed: int) -> EpochDecision:
        n = len(snapshot)
        seen, s_idx, k = split_seen(snapshot, self.params["prune_ratio"])
        n_seen = len(s_idx)
        n_top = int(round((1.0 - self.params["epsilon"]) * k))
        n_explore = k - n_top
        keep = ~seen
        weights = np.ones(n, dtype=np.float32)
        keep_prob = np.ones(n, dtype=np.float32)
        if n_seen:
            score = self.score(snapshot, s_idx)
            if n_top >= n_seen:
                top_pos = np.arange(n_seen)
            elif n_top > 0:
                top_pos = np.argpartition(-score, n_top - 1)[:n_top]
            else:
                top_pos = np.empty(0, dtype=np.int64)
            is_top = np.zeros(n_seen, dtype=bool)
            is_top[top_pos] = True
            rest = np.flatnonzero(~is_top)
            explore = rest[choose_mask(philox(seed, PURPOSE_GREEDY, epoch), len(rest), n_explore)]
            keep[s_idx[top_pos]] = True
            keep[s_idx[explore]] = True
            if n_explore and self.params["reweight"]:
                weights[s_idx[explore]] = len(rest) / n_explore
            keep_prob[s_idx[rest]] = n_explore / len(rest) if len(rest) else 1.0
        kept = n - n_seen + n_top + n_explore
        return budget_decision(
            keep,
            weights,
            keep_prob,
            n_seen=n_seen,
            n_kept=kept,
            prune_ratio=self.params["prune_ratio"],
            top=n_top,
            explore=n_explore,
            unbiased=bool(self.params["reweight"] and (n_explore > 0 or n_top >= n_seen)),
        )


class EpsilonGreedy(_GreedyBase):
    """Keep the highest-loss-EMA samples plus an epsilon share drawn uniformly.

    Args:
        prune_ratio: Fraction pruned per epoch, in [0, 1). Default 0.5.
        delta: Annealing start as a fraction of ``num_epochs``, in (0, 1]. Default 0.875.
        epsilon: Share of the budget drawn uniformly from the non-top samples, in [0, 1].
            Default 0.1.
        reweight: Weight explored samples ``R / e`` for an unbiased sum (default True).
    """

    name = "epsilon_greedy"

    def __init__(
        self,
        prune_ratio: float = DEFAULT_PRUNE_RATIO,
        delta: float = DEFAULT_DELTA,
        epsilon: float = 0.1,
        reweight: bool = True,
    ) -> None:
        self._setup(prune_ratio, delta, epsilon, reweight)

    def score(self, snapshot: ScoreSnapshot, s_idx: np.ndarray) -> np.ndarray:
        return np.asarray(snapshot.loss_ema[s_idx])


class UCB(_GreedyBase):
    """Keep the highest ``loss_ema + c * sigma`` samples plus an epsilon share.

    Args:
        prune_ratio: Fraction pruned per epoch, in [0, 1). Default 0.5.
        delta: Annealing start as a fraction of ``num_epochs``, in (0, 1]. Default 0.875.
        c: Weight of the spread term, >= 0. Default 1.0.
        epsilon: Uniform share of the budget, in [0, 1]. Default 0.1.
        reweight: Weight explored samples for an unbiased sum (default True).
    """

    name = "ucb"

    def __init__(
        self,
        prune_ratio: float = DEFAULT_PRUNE_RATIO,
        delta: float = DEFAULT_DELTA,
        c: float = 1.0,
        epsilon: float = 0.1,
        reweight: bool = True,
    ) -> None:
        c = check_float("c", c, 0.0)
        self._setup(prune_ratio, delta, epsilon, reweight, c=c)

    def score(self, snapshot: ScoreSnapshot, s_idx: np.ndarray) -> np.ndarray:
        sigma = np.float32(_SIGMA_PER_MEAN_ABS_CHANGE) * snapshot.delta_ema[s_idx]
        return np.asarray(snapshot.loss_ema[s_idx] + np.float32(self.params["c"]) * sigma)
