"""SwDPP (Huang et al., IEEE SPL 31:3034, 2024): soft selection by learning dynamics.

**This is a reconstruction.** Only the paper's abstract is public: pruning is
probabilistic sampling rather than hard removal ("soft selection") driven by learning
dynamics, plus a probabilistic Mixup that keeps information diversity at high pruning
rates. Everything below fills in that description (see docs/ALGORITHMS.md); it is not a port
of the authors' code.

* Score of a seen sample: ``s_i = loss_ema_i + dynamics * delta_ema_i`` (the loss EMA
  plus the EMA of how much its loss still moves between visits).
* Keep probability: ``p_i = clip(c * (s_i / mean s)^alpha, p_min, 1)``, with ``c`` solved
  so that ``sum_i p_i = (1 - r) N`` exactly (unseen samples have ``p = 1`` and count in
  the sum). So ``r`` is the real expected fraction pruned per epoch, unlike InfoBatch.
  When unseen samples alone exceed the budget, or ``p_min`` forces more, the expected
  keep is larger than ``(1 - r) N`` and ``info["budget_met"]`` is False.
* Each sample is kept by an independent Bernoulli(p_i) draw from a Philox stream keyed by
  (seed, epoch); kept samples get ``w_i = 1 / p_i`` (dropped ones carry 1, unused), so
  the weighted sum is unbiased.
  ``max_weight`` clips the weights (trading bias for variance); ``info`` then counts
  the clipped samples.
* Probabilistic Mixup: the decision carries ``mixup_prob`` q (default ``r / 2``, rising
  with the prune rate) and ``mixup_alpha``; the loader blends a kept sample with another
  kept sample of its batch with probability q, ``lambda ~ Beta(a, a)``, weight
  ``lambda w_a + (1 - lambda) w_b``; those losses are not sent to the score store.
* Annealing as InfoBatch: epochs ``e >= delta * num_epochs`` keep all, weight 1, no Mixup.
"""

from __future__ import annotations

import numpy as np

from shardprune.policies.decision import (
    EpochDecision,
    PolicyBase,
    budget,
    check_call,
    check_float,
    is_annealing,
    keep_all,
)
from shardprune.policies.rng import PURPOSE_SWDPP_KEEP, philox
from shardprune.scores.snapshot import ScoreSnapshot

_TINY = np.float32(1e-6)


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
        prune_ratio: r, expected fraction pruned per epoch, in [0, 1). Default 0.3.
        delta: Annealing start as a fraction of ``num_epochs``, in (0, 1]. Default 0.875.
        alpha: Exponent sharpening the scores, in [0, 10]. Default 1.0.
        p_min: Smallest keep probability, in (0, 1 - r]. Default 0.05 (capped at 1 - r).
        dynamics: Weight of ``delta_ema`` in the score, >= 0. Default 1.0.
        mixup_prob: q, in [0, 1]; default ``r / 2``.
        mixup_alpha: Beta(a, a) parameter, > 0. Default 1.0.
        max_weight: Clip ``1 / p`` at this value (>= 1), or None (default, unbiased).
    """

    name = "swdpp"

    def __init__(
        self,
        prune_ratio: float = 0.3,
        delta: float = 0.875,
        alpha: float = 1.0,
        p_min: float | None = None,
        dynamics: float = 1.0,
        mixup_prob: float | None = None,
        mixup_alpha: float = 1.0,
        max_weight: float | None = None,
    ) -> None:
        prune_ratio = check_float("prune_ratio", prune_ratio, 0.0, 1.0, hi_open=True)
        delta = check_float("delta", delta, 0.0, 1.0, lo_open=True)
        alpha = check_float("alpha", alpha, 0.0, 10.0)
        keep_ratio = 1.0 - prune_ratio
        p_min = min(0.05, keep_ratio) if p_min is None else p_min
        p_min = check_float(
            "p_min",
            p_min,
            0.0,
            keep_ratio,
            lo_open=True,
            fix=f"p_min above 1 - prune_ratio = {keep_ratio} would keep more than the budget; lower p_min",
        )
        dynamics = check_float("dynamics", dynamics, 0.0, 1e6)
        mixup_prob = prune_ratio / 2.0 if mixup_prob is None else mixup_prob
        mixup_prob = check_float("mixup_prob", mixup_prob, 0.0, 1.0)
        mixup_alpha = check_float("mixup_alpha", mixup_alpha, 0.0, 1e6, lo_open=True)
        if max_weight is not None:
            max_weight = check_float("max_weight", max_weight, 1.0, float("inf"))
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

    def keep_probabilities(self, snapshot: ScoreSnapshot) -> tuple[np.ndarray, dict[str, float]]:
        """Per-sample keep probabilities (1 for unseen) and the solver's summary."""
        n = len(snapshot)
        seen = snapshot.seen
        s_idx = np.flatnonzero(seen)
        p = np.ones(n, dtype=np.float32)
        # The exact (1 - r) N, not rounded: the expected keep is the user's r exactly.
        target = (1.0 - self.params["prune_ratio"]) * n - (n - len(s_idx))
        c = 0.0
        if len(s_idx):
            s = snapshot.loss_ema[s_idx] + np.float32(self.params["dynamics"]) * snapshot.delta_ema[s_idx]
            s = np.maximum(s, np.float32(0.0))
            mean = float(np.mean(s, dtype=np.float64))
            x = s / np.float32(mean) if mean > 0 else np.ones_like(s)
            if self.params["alpha"] != 1.0:
                np.power(x, np.float32(self.params["alpha"]), out=x)
            np.maximum(x, _TINY, out=x)
            p[s_idx], c = solve_keep_prob(x, float(target), self.params["p_min"])
        return p, {"c": c, "target_seen": float(target)}

    def decide(self, snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> EpochDecision:
        check_call(snapshot, epoch, seed, num_epochs)
        n = len(snapshot)
        if is_annealing(epoch, num_epochs, self.params["delta"]):
            return keep_all(n, annealing=True)
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
                "weights_clipped": clipped,
                "pruned_fraction": 1.0 - kept / n,
                **solver,
            },
        )
