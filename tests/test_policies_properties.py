"""Properties every pruning policy must have, checked on generated score vectors.

Unbiasedness, budgets, unseen samples, annealing and determinism; the exact rules of
each policy are in tests/test_policies_rules.py.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardprune.policies import POLICIES, EpochDecision, make_policy, swdpp
from shardprune.scores.snapshot import ScoreSnapshot, fresh_columns

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = 400


def make_snapshot(loss: np.ndarray, seen: np.ndarray, delta: np.ndarray | None = None) -> ScoreSnapshot:
    """Scores as the store would hold them: ``loss`` on seen samples, fill values elsewhere."""
    cols = fresh_columns(len(loss))
    cols["loss"][seen] = loss[seen]
    cols["loss_ema"][seen] = loss[seen]
    if delta is not None:
        cols["delta_ema"][seen] = delta[seen]
    cols["visits"][seen] = 2
    cols["last_epoch"][seen] = 0
    return ScoreSnapshot.from_columns(cols, copy=False)


@st.composite
def snapshots(draw: Any, min_n: int = 1, max_n: int = 120) -> ScoreSnapshot:
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    unseen_share = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]))
    seen = rng.random(n) >= unseen_share
    kind = draw(st.sampled_from(["gamma", "ties", "equal", "spread"]))
    if kind == "gamma":
        loss = rng.gamma(2.0, 1.0, n)
    elif kind == "ties":
        loss = rng.integers(0, 3, n).astype(float)  # many samples exactly at the mean or tied
    elif kind == "equal":
        loss = np.full(n, 0.25)
    else:
        loss = 10.0 ** rng.uniform(-4, 3, n)
    delta = rng.gamma(1.0, 0.3, n)
    return make_snapshot(loss.astype(np.float32), seen, delta.astype(np.float32))


def policy_params(draw: Any, name: str) -> dict[str, Any]:
    if name == "full":
        return {}
    r = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9]))
    params: dict[str, Any] = {"prune_ratio": r}
    if name in ("epsilon_greedy", "ucb"):
        params["epsilon"] = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    if name == "ucb":
        params["c"] = draw(st.sampled_from([0.0, 1.0, 3.0]))
    if name == "swdpp":
        params["alpha"] = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
        params["dynamics"] = draw(st.sampled_from([0.0, 1.0]))
        params["p_min"] = draw(st.sampled_from([0.01, 0.05, 1.0 - r]))
    return params


@st.composite
def policies(draw: Any) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(POLICIES))
    return name, policy_params(draw, name)


def budget(n: int, r: float) -> int:
    return int(round((1.0 - r) * n))


def check_shape(d: EpochDecision, n: int) -> None:
    assert d.keep.shape == (n,) and d.keep.dtype == bool
    assert d.weights.shape == (n,) and d.weights.dtype == np.float32
    assert np.isfinite(d.weights).all() and (d.weights >= 1.0).all()
    assert (d.weights[~d.keep] == 1.0).all()


@SETTINGS
@given(snapshots(), policies(), st.integers(0, 2**64 - 1))
def test_weighted_sum_is_an_unbiased_estimate_of_the_full_sum(
    snap: ScoreSnapshot, policy: tuple[str, dict[str, Any]], value_seed: int
) -> None:
    """Mean over seeds of sum(keep * w * x) equals sum(x) within 5 standard errors."""
    name, params = policy
    p = make_policy(name, **params)
    n = len(snap)
    x = np.random.default_rng(value_seed % 2**32).normal(1.0, 2.0, n)  # signed, like gradient entries
    estimates = np.empty(SEEDS)
    unbiased = True
    for seed in range(SEEDS):
        d = p.decide(snap, 0, seed, 10)
        check_shape(d, n)
        estimates[seed] = float(np.sum(np.where(d.keep, d.weights.astype(np.float64) * x, 0.0)))
        unbiased &= bool(d.info.get("unbiased", True))
    exact = float(x.sum())
    if not unbiased:
        # Only two cases may be biased, and the decision must say so: InfoBatch keeping
        # floor((1 - r)|W|) = 0 of a non-empty W, and greedy with no exploration draw left.
        seen = snap.seen
        n_seen = int(seen.sum())
        r = params["prune_ratio"]
        if name == "infobatch":
            loss = snap.loss.astype(np.float64)
            n_well = int(np.sum(seen & (loss < loss[seen].mean())))
            assert n_well > 0 and int(min(1.0, max(0.1, 1.0 - r)) * n_well) == 0
        else:
            assert name in ("epsilon_greedy", "ucb"), (name, params)
            k = min(n_seen, max(budget(n, r) - (n - n_seen), min(n_seen, 1)))
            top = round((1.0 - params["epsilon"]) * k)
            assert k - top == 0 and top < n_seen
        return
    stderr = float(estimates.std(ddof=1)) / math.sqrt(SEEDS)
    tol = 5.0 * stderr + 1e-5 * float(np.abs(x).sum())  # float32 weights: ~1e-7 relative each
    assert abs(float(estimates.mean()) - exact) <= tol, (name, params, estimates.mean(), exact, stderr)


@SETTINGS
@given(snapshots(max_n=200), policies(), st.integers(0, 2**32 - 1), st.integers(0, 6))
def test_unseen_samples_are_never_pruned(
    snap: ScoreSnapshot, policy: tuple[str, dict[str, Any]], seed: int, epoch: int
) -> None:
    name, params = policy
    d = make_policy(name, **params).decide(snap, epoch, seed, 10)
    unseen = ~snap.seen
    assert d.keep[unseen].all()
    assert (d.weights[unseen] == 1.0).all()


@SETTINGS
@given(snapshots(min_n=20, max_n=200), policies(), st.integers(0, 2**32 - 1))
def test_realised_keep_count_matches_each_spec(
    snap: ScoreSnapshot, policy: tuple[str, dict[str, Any]], seed: int
) -> None:
    name, params = policy
    n = len(snap)
    seen = snap.seen
    n_seen = int(seen.sum())
    r = float(params.get("prune_ratio", 0.0))
    d = make_policy(name, **params).decide(snap, 1, seed, 10)
    kept = d.num_kept
    assert d.info["pruned_fraction"] == pytest.approx(1.0 - kept / n, abs=1e-12)
    if name == "full":
        assert kept == n
    elif name in ("random", "epsilon_greedy", "ucb"):
        # Unseen samples fill the budget first; at least one seen sample stays.
        expected = (n - n_seen) + min(n_seen, max(budget(n, r) - (n - n_seen), min(n_seen, 1)))
        assert kept == expected
    elif name == "infobatch":
        loss = snap.loss.astype(np.float64)
        mean = loss[seen].mean() if n_seen else math.nan
        n_well = int(np.sum(seen & (loss < mean))) if n_seen else 0
        assert kept == n - (n_well - int(min(1.0, max(0.1, 1.0 - r)) * n_well))
    else:  # swdpp: the expected count is exactly (1 - r) N when it is reachable
        assert name == "swdpp"
        p = d.keep_prob
        assert p is not None and p.min() >= min(params["p_min"], 1.0) - 1e-6
        reachable = (n - n_seen) + params["p_min"] * n_seen <= (1.0 - r) * n
        if reachable:
            assert float(p.astype(np.float64).sum()) == pytest.approx((1.0 - r) * n, rel=1e-5, abs=1e-3)
            assert d.info["budget_met"]
        counts = np.array([make_policy(name, **params).decide(snap, 1, s, 10).num_kept for s in range(200)])
        var = float(np.sum(p.astype(np.float64) * (1.0 - p)))
        tol = 5.0 * math.sqrt(var / len(counts)) + 1e-3 * n
        assert abs(counts.mean() - float(p.astype(np.float64).sum())) <= tol


def test_swdpp_realised_fraction_at_scale() -> None:
    """On 200k samples one epoch's realised fraction is within 5 sigma of r."""
    n = 200_000
    rng = np.random.default_rng(3)
    snap = make_snapshot(rng.gamma(2.0, 1.0, n).astype(np.float32), np.ones(n, dtype=bool))
    for r in (0.3, 0.7):
        d = make_policy("swdpp", prune_ratio=r).decide(snap, 2, 5, 10)
        p = d.keep_prob
        assert p is not None
        sigma = math.sqrt(float(np.sum(p * (1.0 - p.astype(np.float64)))))
        assert abs(d.num_kept - (1.0 - r) * n) <= 5.0 * sigma
        assert d.mixup_prob == swdpp.MIXUP_PROB and d.mixup_alpha == swdpp.MIXUP_ALPHA


def annealing_epoch(num_epochs: int, delta: float) -> int:
    """First annealing epoch, by integer arithmetic on delta's decimal digits."""
    digits = repr(delta)
    mantissa, _, exponent = digits.partition("e")
    whole, _, frac = mantissa.partition(".")
    num = int(whole + frac)
    den = 10 ** len(frac)
    if exponent:
        e = int(exponent)
        num, den = (num * 10**e, den) if e >= 0 else (num, den * 10**-e)
    return -(-(num * num_epochs) // den)  # ceil(delta * num_epochs)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(POLICIES),
    st.integers(1, 1000),
    st.floats(0.0, 1.0, exclude_min=True, allow_nan=False),
    st.integers(0, 2**32 - 1),
)
def test_annealing_epochs_keep_everything_with_weight_one(name: str, num_epochs: int, delta: float, seed: int) -> None:
    n = 64
    rng = np.random.default_rng(seed)
    snap = make_snapshot(rng.gamma(2.0, 1.0, n).astype(np.float32), np.ones(n, dtype=bool))
    params: dict[str, Any] = {"delta": delta} if name == "full" else {"delta": delta, "prune_ratio": 0.5}
    p = make_policy(name, **params)
    first = annealing_epoch(num_epochs, delta)
    assert Fraction(first - 1) < Fraction(repr(delta)) * num_epochs <= Fraction(first)
    for epoch in {first, first + 1, num_epochs - 1, num_epochs + 5}:
        if epoch < first:
            continue
        d = p.decide(snap, epoch, seed, num_epochs)
        assert d.info["annealing"] is True
        assert d.keep.all() and (d.weights == 1.0).all() and d.mixup_prob == 0.0
    if first >= 1 and name != "full":
        d = p.decide(snap, first - 1, seed, num_epochs)
        assert d.info["annealing"] is False and not d.keep.all()


@pytest.mark.parametrize(
    ("num_epochs", "delta", "first"),
    [(10, 0.875, 9), (8, 0.875, 7), (10, 0.7, 7), (3, 1 / 3, 1), (200, 0.875, 175), (7, 0.1, 1), (5, 1.0, 5)],
)
def test_annealing_boundary_examples(num_epochs: int, delta: float, first: int) -> None:
    """Includes products that are not integers (8.75) and ones a float product gets wrong."""
    n = 50
    snap = make_snapshot(np.linspace(0.1, 2.0, n).astype(np.float32), np.ones(n, dtype=bool))
    p = make_policy("infobatch", delta=delta)
    assert p.decide(snap, first - 1, 0, num_epochs).info["annealing"] is False
    on = p.decide(snap, first, 0, num_epochs)
    assert on.info["annealing"] is True and (on.weights == 1.0).all()


@SETTINGS
@given(snapshots(), policies(), st.integers(0, 2**128 - 1), st.integers(0, 50))
def test_same_seed_same_decision(
    snap: ScoreSnapshot, policy: tuple[str, dict[str, Any]], seed: int, epoch: int
) -> None:
    name, params = policy
    a = make_policy(name, **params).decide(snap, epoch, seed, 100)
    b = make_policy(name, **params).decide(snap, epoch, seed, 100)
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert repr(a.info) == repr(b.info)  # repr: NaN thresholds compare equal


@pytest.mark.parametrize("name", [p for p in POLICIES if p != "full"])
def test_neighbouring_seeds_and_epochs_give_independent_draws(name: str) -> None:
    n = 4000
    rng = np.random.default_rng(1)
    snap = make_snapshot(rng.gamma(2.0, 1.0, n).astype(np.float32), np.ones(n, dtype=bool))
    p = make_policy(name, prune_ratio=0.5, **({"epsilon": 0.5} if name in ("epsilon_greedy", "ucb") else {}))
    masks = [p.decide(snap, e, s, 10).keep for s, e in ((0, 0), (1, 0), (0, 1), (2**64, 0))]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert not np.array_equal(masks[i], masks[j]), (i, j)


def test_golden_decision_for_a_fixed_seed() -> None:  # GOLDEN below
    """A change to any policy's draws shows up here."""
    n = 40
    snap = make_snapshot(np.linspace(0.0, 3.9, n).astype(np.float32), np.arange(n) % 7 != 3)
    got = {
        name: np.flatnonzero(~make_policy(name, **({} if name == "full" else {"prune_ratio": 0.5})).decide(snap, 1, 1234, 10).keep).tolist()
        for name in POLICIES
    }
    assert got == GOLDEN


GOLDEN: dict[str, list[int]] = {
    "epsilon_greedy": [0, 1, 2, 4, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23],
    "full": [],
    "infobatch": [1, 2, 4, 5, 9, 12, 13, 14, 16],
    "random": [0, 1, 5, 6, 7, 8, 12, 13, 14, 15, 19, 20, 23, 26, 27, 33, 34, 35, 36, 39],
    "swdpp": [0, 2, 6, 7, 13, 14, 15, 16, 18, 20, 21, 22, 25, 26, 27, 28, 29, 32, 33, 37],
    "ucb": [0, 1, 2, 4, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22, 23],
}


@SETTINGS
@given(policies())
def test_policy_state_dict_round_trip(policy: tuple[str, dict[str, Any]]) -> None:
    import json

    name, params = policy
    p = make_policy(name, **params)
    state = json.loads(json.dumps(p.state_dict()))
    q = make_policy(name, **params)
    q.load_state_dict(state)
    assert q.state_dict() == p.state_dict()
    snap = make_snapshot(np.linspace(0.1, 2.0, 30).astype(np.float32), np.ones(30, dtype=bool))
    np.testing.assert_array_equal(p.decide(snap, 0, 9, 10).keep, q.decide(snap, 0, 9, 10).keep)
