"""SwDPP (Huang et al., IEEE SPL 31:3034, 2024): soft selection by learning dynamics.

**This is a reconstruction.** Only the paper's abstract is public: pruning is
probabilistic sampling rather than hard removal ("soft selection") driven by learning
dynamics, plus a probabilistic Mixup that keeps information diversity at high pruning
rates. Everything below fills in that description (see docs/ALGORITHMS.md); it is not a port
of the authors' code. A first reconstruction (loss EMA scores, keep probabilities
proportional to the score with a floor of 0.05, so weights up to 20) was measured
harmful: it followed epoch-0 losses and its weights multiplied the SGD step. This one:

1. Score of a seen sample: its latest loss plus ``dynamics`` times the EMA of how much
   its loss moved between visits, ``s_i = loss_i + dynamics * delta_ema_i``. The latest
   loss follows the current state of learning; a slow loss EMA would keep early losses
   for many epochs.
2. Rank, not ratio: seen samples are ranked by score, ``u_i = (rank_i + 1/2) / n_seen``
   in (0, 1), so a few outlier losses cannot dominate the probabilities.
3. Keep probability ``p_i = clip(c * u_i^alpha, p_min, 1)``, with ``c`` solved so that
   ``sum_i p_i = (1 - r) N`` exactly (unseen samples have ``p = 1`` and count in the
   sum): ``r`` is the real expected fraction pruned per epoch. ``p_min`` defaults to
   ``0.75 (1 - r)`` (0.375 at r = 0.5), which bounds every weight by ``4 / (3 (1 - r))``
   (2.67 at r = 0.5); a floor of ``(1 - r) / 2`` made SGD unstable in one seed of five on
   digits (validation 0.854 against 0.93-0.94). When
   unseen samples alone exceed the budget, the expected keep is larger than
   ``(1 - r) N`` and ``info["budget_met"]`` is False.
4. Each sample is kept by an independent Bernoulli(p_i) draw from a Philox stream keyed
   by (seed, epoch); kept samples get ``w_i = 1 / p_i`` (dropped ones carry 1, unused),
   so the weighted sum is unbiased. ``max_weight`` optionally clips them further.
5. Probabilistic Mixup (off by default, ``mixup_prob = 0``: it did not help on the
   validation splits): the decision carries ``mixup_prob`` q and ``mixup_alpha``; the
   loader blends a kept sample with another kept sample of its batch (never a pruned
   one) with probability q, ``lambda ~ Beta(a, a)``, targets and weights mixed by
   lambda; those losses are not sent to the score store.
6. Annealing as InfoBatch: epochs ``e >= delta * num_epochs`` keep all, weight 1, no Mixup.

Defaults (``p_min``, ``alpha``, ``dynamics``, ``mixup_prob``, ``mixup_alpha``) were chosen
on a validation split carved from the train split of MNIST-1D and scikit-learn digits;
the variants tried and their numbers are in benchmarks/results/training.md.
"""

from __future__ import annotations

import numpy as np

from shardprune.policies.decision import (
    DEFAULT_DELTA,
    DEFAULT_PRUNE_RATIO,
    EpochDecision,
    PolicyBase,
    budget,
    check_ratio_delta,
)
from shardprune.policies.rng import PURPOSE_SWDPP_KEEP, philox
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.validate import check_float

#: Defaults chosen on validation splits of MNIST-1D and digits (benchmarks/results/training.md).
#: ``p_min = P_MIN_SHARE * (1 - r)`` unless given: every weight is at most ``1 / p_min``.
P_MIN_SHARE = 0.75
ALPHA = 1.0
DYNAMICS = 1.0
#: Mixup is off by default: on the validation splits it did not help consistently (q = 0.1
#: gained 0.3 points at r = 0.3 and lost 1.3 and 1.5 points at r = 0.5 and 0.7).
MIXUP_PROB = 0.0
MIXUP_ALPHA = 1.0
_TINY = np.float32(1e-6)


def rank_scores(score: np.ndarray) -> np.ndarray:
    """``(rank + 1/2) / n`` of each score among ``score`` (ascending; ties share their mean rank)."""
    n = len(score)
    order = np.argsort(score, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    # Tied scores get the mean of their ranks, so equal samples get equal probabilities.
    sorted_scores = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    if len(starts) < n:
        sizes = np.diff(np.r_[starts, n])
        mean_rank = starts + (sizes - 1) / 2.0
        ranks[order] = np.repeat(mean_rank, sizes)
    return ((ranks + 0.5) / n).astype(np.float32)


def solve_keep_prob(x: np.ndarray, target: float, p_min: float, *, rtol: float = 1e-7) -> tuple[np.ndarray, float]:
    """Find ``c`` with ``sum(clip(c * x, p_min, 1)) = target``; return the probabilities and ``c``.

    ``f(c)`` is continuous, non-decreasing and piecewise linear in ``c``; Newton steps on
    the current linear piece (exact once the clipped sets stop changing), kept inside a
    bisection bracket, converge in a handful of passes over ``x``.

    Args:
        x: float32[n] relative scores, > 0.
        target: Wanted sum, within ``[p_min * n, n]`` (clamped otherwise).
        p_min: Lower clip, in (0, 1].
        rtol: Relative tolerance on the sum.
    """
    n = len(x)
    if n == 0:
        return np.empty(0, dtype=np.float32), 0.0
    target = float(min(max(target, p_min * n), n))
    lo, hi = 0.0, 1.0 / float(x.min())
    c = target / float(np.sum(x, dtype=np.float64))
    y = np.empty_like(x)
    for _ in range(200):
        np.multiply(x, np.float32(c), out=y)
        upper = y >= 1.0
        lower = y <= p_min
        n_up = int(np.count_nonzero(upper))
        n_low = int(np.count_nonzero(lower))
        mid_sum = float(np.sum(x, where=~(upper | lower), dtype=np.float64))
        f = n_up + p_min * n_low + c * mid_sum
        if abs(f - target) <= rtol * max(target, 1.0):
            break
        if f < target:
            lo = c
        else:
            hi = c
        step = (target - n_up - p_min * n_low) / mid_sum if mid_sum > 0 else -1.0
        c = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= 1e-12 * hi:
            break
    np.clip(y, p_min, 1.0, out=y)
    return y, c


class SwDPP(PolicyBase):
    """Soft, learning-dynamics-driven pruning with an exact expected budget (reconstruction).

    Args:
        prune_ratio: r, expected fraction pruned per epoch, in [0, 1). Default 0.5.
        delta: Annealing start as a fraction of ``num_epochs``, in (0, 1]. Default 0.875.
        alpha: Exponent on the score rank, in [0, 10]; larger keeps the high-score samples
            more surely. Default 1.0.
        p_min: Smallest keep probability, in (0, 1 - r]; every weight is at most
            ``1 / p_min``. Default ``P_MIN_SHARE * (1 - r)``.
        dynamics: Weight of ``delta_ema`` (the mean loss movement per visit) in the
            score, >= 0. Default 1.0.
        mixup_prob: q, the probability that a kept sample is Mixup-blended, in [0, 1].
            Default 0.0 (off; see :data:`MIXUP_PROB`).
        mixup_alpha: Beta(a, a) parameter, > 0. Default 1.0.
        max_weight: Clip ``1 / p`` at this value (>= 1), or None (default: unbiased).
    """

    name = "swdpp"

    def __init__(
        self,
        prune_ratio: float = DEFAULT_PRUNE_RATIO,
        delta: float = DEFAULT_DELTA,
        alpha: float = ALPHA,
        p_min: float | None = None,
        dynamics: float = DYNAMICS,
        mixup_prob: float = MIXUP_PROB,
        mixup_alpha: float = MIXUP_ALPHA,
        max_weight: float | None = None,
    ) -> None:
        prune_ratio, delta = check_ratio_delta(prune_ratio, delta, "swdpp")
        alpha = check_float("alpha", alpha, 0.0, 10.0)
        keep_ratio = 1.0 - prune_ratio
        p_min = P_MIN_SHARE * keep_ratio if p_min is None else p_min
        p_min = check_float(
            "p_min",
            p_min,
            0.0,
            keep_ratio,
            low_open=True,
            fix=f"p_min above 1 - prune_ratio = {keep_ratio:g} would keep more than the budget; lower p_min",
        )
        dynamics = check_float("dynamics", dynamics, 0.0)
        mixup_prob = check_float("mixup_prob", mixup_prob, 0.0, 1.0)
        mixup_alpha = check_float("mixup_alpha", mixup_alpha, 0.0, low_open=True)
        if max_weight is not None:
            max_weight = check_float("max_weight", max_weight, 1.0)
        super().__init__(
            prune_ratio=prune_ratio,
            delta=delta,
            alpha=alpha,
            p_min=p_min,
            dynamics=dynamics,
            mixup_prob=mixup_prob,
            mixup_alpha=mixup_alpha,
            max_weight=max_weight,
        )

    def scores(self, snapshot: ScoreSnapshot, s_idx: np.ndarray) -> np.ndarray:
        """``loss + dynamics * delta_ema`` of the seen samples ``s_idx`` (float32)."""
        dyn = np.float32(self.params["dynamics"])
        return np.asarray(snapshot.loss[s_idx] + dyn * snapshot.delta_ema[s_idx], dtype=np.float32)

    def keep_probabilities(self, snapshot: ScoreSnapshot) -> tuple[np.ndarray, dict[str, float]]:
        """Per-sample keep probabilities (1 for unseen) and the solver's summary."""
        n = len(snapshot)
        s_idx = np.flatnonzero(snapshot.seen)
        p = np.ones(n, dtype=np.float32)
        # The exact (1 - r) N, not rounded: the expected keep is the user's r exactly.
        target = (1.0 - self.params["prune_ratio"]) * n - (n - len(s_idx))
        c = 0.0
        if len(s_idx):
            x = rank_scores(self.scores(snapshot, s_idx))
            if self.params["alpha"] != 1.0:
                np.power(x, np.float32(self.params["alpha"]), out=x)
            np.maximum(x, _TINY, out=x)
            p[s_idx], c = solve_keep_prob(x, float(target), self.params["p_min"])
        return p, {"c": c, "target_seen": float(target)}

    def plan(self, snapshot: ScoreSnapshot, epoch: int, seed: int) -> EpochDecision:
        n = len(snapshot)
        p, solver = self.keep_probabilities(snapshot)
        u = philox(seed, PURPOSE_SWDPP_KEEP, epoch).random(n, dtype=np.float32)
        keep = u < p
        weights = np.ones(n, dtype=np.float32)
        np.divide(np.float32(1.0), p, out=weights, where=keep)
        clipped = 0
        if self.params["max_weight"] is not None:
            clipped = int(np.count_nonzero(weights > self.params["max_weight"]))
            np.minimum(weights, np.float32(self.params["max_weight"]), out=weights)
        expected = float(np.sum(p, dtype=np.float64))
        wanted = (1.0 - self.params["prune_ratio"]) * n
        kept = int(np.count_nonzero(keep))
        return EpochDecision(
            keep=keep,
            weights=weights,
            keep_prob=p,
            mixup_prob=float(self.params["mixup_prob"]),
            mixup_alpha=float(self.params["mixup_alpha"]),
            info={
                "annealing": False,
                "expected_kept": expected,
                "budget": budget(n, self.params["prune_ratio"]),
                "budget_met": abs(expected - wanted) <= 1e-5 * n + 1e-3,
                "kept": kept,
                "max_weight": float(weights.max()) if n else 1.0,
                "weights_clipped": clipped,
                "pruned_fraction": 1.0 - kept / n if n else 0.0,
                **solver,
            },
        )
