"""Each policy's exact rule, checked against an independent reference; parameters and state."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import rankdata

from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.policies import DEFAULT_PRUNE_RATIO, POLICIES, make_policy, parse_policy_name
from shardprune.policies import swdpp
from shardprune.policies.swdpp import solve_keep_prob
from shardprune.scores.snapshot import ScoreSnapshot, fresh_columns


def make_snapshot(
    loss: np.ndarray, seen: np.ndarray | None = None, ema: np.ndarray | None = None, delta: np.ndarray | None = None
) -> ScoreSnapshot:
    seen = np.ones(len(loss), dtype=bool) if seen is None else seen
    cols = fresh_columns(len(loss))
    cols["loss"][seen] = loss[seen]
    cols["loss_ema"][seen] = (loss if ema is None else ema)[seen]
    if delta is not None:
        cols["delta_ema"][seen] = delta[seen]
    cols["visits"][seen] = 3
    cols["last_epoch"][seen] = 0
    return ScoreSnapshot.from_columns(cols, copy=False)


# -- InfoBatch ----------------------------------------------------------------------------


def official_prune(scores: list[float], prune_ratio: float) -> tuple[set[int], set[int], int, float]:
    """InfoBatch.prune() from the official repository, as a plain loop (randomness left out).

    Returns (indices always kept, well-learned indices, how many of them to keep, their weight).
    """
    keep_ratio = min(1.0, max(1e-1, 1.0 - prune_ratio))
    mean = sum(scores) / len(scores)
    well = {i for i, s in enumerate(scores) if s < mean}
    remained = {i for i in range(len(scores)) if i not in well}
    return remained, well, int(keep_ratio * len(well)), 1 / keep_ratio


FIXED_SCORES = [2.0, 0.5, 0.5, 3.0, 1.75, 0.125, 1.75, 4.0, 0.0, 1.0, 2.5, 0.75, 1.75, 1.25, 0.25, 8.25, 0.375]


@pytest.mark.parametrize("prune_ratio", [0.0, 0.3, 0.5, 0.7, 0.875, 0.9])
def test_infobatch_matches_the_official_rule_on_a_fixed_vector(prune_ratio: float) -> None:
    # Mean is exactly 1.75 (29.75 / 17, binary fractions): three samples sit on it and must not
    # count as well learned; |W| = 9, so (1 - r)|W| is not whole for most r.
    assert sum(FIXED_SCORES) / len(FIXED_SCORES) == 1.75
    snap = make_snapshot(np.array(FIXED_SCORES, dtype=np.float32))
    remained, well, k, official_weight = official_prune(FIXED_SCORES, prune_ratio)
    assert {4, 6, 12} <= remained
    for mode in ("official", "exact"):
        policy = make_policy("infobatch", prune_ratio=prune_ratio, weight=mode)
        picked_seen: set[int] = set()
        for seed in range(60):
            d = policy.decide(snap, 0, seed, 10)
            kept = set(np.flatnonzero(d.keep).tolist())
            picked = kept & well
            assert remained <= kept and len(picked) == k  # exact count, without replacement
            assert kept == remained | picked
            expected = official_weight if mode == "official" else len(well) / k if k else 1.0
            assert all(d.weights[i] == np.float32(expected) for i in picked)
            assert all(d.weights[i] == 1.0 for i in range(len(FIXED_SCORES)) if i not in picked)
            assert d.info["threshold"] == 1.75 and d.info["well_learned"] == len(well)
            picked_seen |= picked
        assert picked_seen == well or k == 0  # every well-learned sample can be drawn


def test_infobatch_keeps_a_uniform_subset_of_the_well_learned() -> None:
    rng = np.random.default_rng(0)
    n = 300
    snap = make_snapshot(rng.gamma(2.0, 1.0, n).astype(np.float32))
    policy = make_policy("infobatch", prune_ratio=0.5)
    well = np.flatnonzero(snap.loss < snap.loss.astype(np.float64).mean())
    seeds = 600
    counts = np.zeros(n)
    for seed in range(seeds):
        counts += policy.decide(snap, 3, seed, 10).keep
    k = int(0.5 * len(well))
    p = k / len(well)
    sigma = math.sqrt(seeds * p * (1 - p))
    assert np.all(np.abs(counts[well] - seeds * p) <= 5 * sigma)
    assert np.all(np.delete(counts, well) == seeds)


def test_infobatch_ignores_unseen_samples_and_the_loss_scale() -> None:
    rng = np.random.default_rng(1)
    n = 500
    loss = rng.gamma(2.0, 1.0, n).astype(np.float32)
    seen = rng.random(n) < 0.6
    policy = make_policy("infobatch", prune_ratio=0.5)
    d = policy.decide(make_snapshot(loss, seen), 1, 7, 10)
    assert d.info["threshold"] == pytest.approx(float(loss[seen].astype(np.float64).mean()), rel=1e-12)
    assert d.keep[~seen].all()
    # The official 3.0 initial score would count unseen samples in the mean; shardprune does not,
    # so multiplying every loss by 1000 (another loss's scale) changes nothing.
    scaled = policy.decide(make_snapshot(loss * np.float32(1024), seen), 1, 7, 10)
    np.testing.assert_array_equal(scaled.keep, d.keep)
    np.testing.assert_array_equal(scaled.weights, d.weights)
    nobody = policy.decide(ScoreSnapshot.fresh(n), 1, 7, 10)
    assert nobody.keep.all() and (nobody.weights == 1).all() and nobody.info["unbiased"]


def test_infobatch_scores_are_the_raw_latest_loss_not_the_ema() -> None:
    loss = np.array([0.1, 0.2, 5.0, 5.0], dtype=np.float32)
    ema = np.array([5.0, 5.0, 0.1, 0.2], dtype=np.float32)
    d = make_policy("infobatch", prune_ratio=0.9).decide(make_snapshot(loss, ema=ema), 0, 0, 10)
    assert d.info["well_learned"] == 2 and d.keep[2:].all() and not d.keep[:2].any()
    assert not d.info["unbiased"]  # floor(0.1 * 2) = 0: all of W dropped, as the official code does


def test_infobatch_exact_weight_equals_official_when_the_count_is_whole() -> None:
    loss = np.arange(20, dtype=np.float32)  # mean 9.5: |W| = 10
    snap = make_snapshot(loss)
    a = make_policy("infobatch", prune_ratio=0.5, weight="exact").decide(snap, 0, 4, 10)
    b = make_policy("infobatch", prune_ratio=0.5, weight="official").decide(snap, 0, 4, 10)
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.info["weight"] == 2.0 and b.info["unbiased"]
    c = make_policy("infobatch", prune_ratio=0.3, weight="official").decide(make_snapshot(loss[:19]), 0, 4, 10)
    assert c.info["kept_well_learned"] == 6 and not c.info["unbiased"]  # int(0.7 * 9) = 6, 9/6 != 1/0.7


# -- epsilon-greedy and UCB ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["epsilon_greedy", "ucb"])
@pytest.mark.parametrize("epsilon", [0.0, 0.2, 1.0])
def test_greedy_keeps_the_top_scores_plus_an_explored_share(name: str, epsilon: float) -> None:
    rng = np.random.default_rng(2)
    n = 400
    loss = rng.gamma(2.0, 1.0, n).astype(np.float32)
    ema = rng.gamma(2.0, 1.0, n).astype(np.float32)
    delta = rng.gamma(1.0, 0.5, n).astype(np.float32)
    snap = make_snapshot(loss, ema=ema, delta=delta)
    c = 2.0
    params: dict[str, Any] = {"prune_ratio": 0.6, "epsilon": epsilon, **({"c": c} if name == "ucb" else {})}
    d = make_policy(name, **params).decide(snap, 0, 11, 10)
    score = ema.astype(np.float64) + (c * math.sqrt(math.pi) / 2 * delta if name == "ucb" else 0.0)
    k = round(0.4 * n)
    top = round((1 - epsilon) * k)
    explore = k - top
    assert d.num_kept == k
    order = np.argsort(-score, kind="stable")
    assert d.keep[order[:top]].all()
    explored = np.flatnonzero(d.keep & (d.weights != 1.0)) if explore else np.empty(0, dtype=np.int64)
    assert len(explored) == explore
    if explore:
        assert np.allclose(d.weights[explored], (n - top) / explore)
    assert d.info["unbiased"] == (explore > 0)
    d2 = make_policy(name, **params, reweight=False).decide(snap, 0, 11, 10)
    np.testing.assert_array_equal(d2.keep, d.keep)
    assert (d2.weights == 1.0).all()


# -- SwDPP (reconstruction) ---------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("prune_ratio", [0.1, 0.5, 0.9])
def test_swdpp_probabilities_follow_the_formula(alpha: float, prune_ratio: float) -> None:
    rng = np.random.default_rng(3)
    n = 2000
    loss = rng.gamma(2.0, 1.0, n).astype(np.float32)
    loss[:50] = loss[50:100]  # ties share their mean rank
    delta = rng.gamma(1.0, 0.3, n).astype(np.float32)
    seen = rng.random(n) < 0.95
    snap = make_snapshot(loss, seen, ema=rng.gamma(2.0, 1.0, n).astype(np.float32), delta=delta)
    p_min = 0.02
    policy = make_policy("swdpp", prune_ratio=prune_ratio, alpha=alpha, dynamics=0.5, p_min=p_min)
    d = policy.decide(snap, 0, 5, 10)
    p = d.keep_prob
    assert p is not None
    s = loss[seen] + np.float32(0.5) * delta[seen]  # the latest loss, not the EMA
    u = (rankdata(s, method="average") - 0.5) / seen.sum()
    ref = np.clip(d.info["c"] * u**alpha, p_min, 1.0)
    np.testing.assert_allclose(p[seen], ref, rtol=2e-5, atol=1e-6)
    assert (p[~seen] == 1.0).all()
    assert float(p.astype(np.float64).sum()) == pytest.approx((1 - prune_ratio) * n, rel=1e-5)
    kept = d.keep
    np.testing.assert_allclose(d.weights[kept], 1.0 / p[kept], rtol=1e-6)
    assert (d.weights[~kept] == 1.0).all()


def test_swdpp_scores_follow_the_latest_loss_not_the_ema() -> None:
    # The EMA still remembers an early order (sample 0 hardest); the latest losses say the opposite.
    n = 10
    latest = np.linspace(0.1, 1.0, n).astype(np.float32)
    snap = make_snapshot(latest, ema=latest[::-1].copy())
    p = make_policy("swdpp", prune_ratio=0.5, dynamics=0.0).decide(snap, 1, 0, 10).keep_prob
    assert p is not None and (np.diff(p) >= 0).all() and p[0] < p[-1]


def test_swdpp_probabilities_depend_on_ranks_not_on_outliers() -> None:
    loss = np.linspace(0.1, 1.0, 20).astype(np.float32)
    outlier = loss.copy()
    outlier[-1] = 1e6  # one exploding loss: under loss ratios it would take the whole budget
    policy = make_policy("swdpp", prune_ratio=0.5)
    a = policy.decide(make_snapshot(loss), 1, 0, 10)
    b = policy.decide(make_snapshot(outlier), 1, 0, 10)
    assert a.keep_prob is not None and b.keep_prob is not None
    assert a.keep_prob.tolist() == b.keep_prob.tolist()


@pytest.mark.parametrize("prune_ratio", [0.3, 0.5, 0.7])
def test_swdpp_default_weights_are_bounded_by_four_thirds_over_keep_ratio(prune_ratio: float) -> None:
    # The first reconstruction's p_min = 0.05 gave weights of 20; the default floor is 0.75 (1 - r).
    loss = (10.0 ** np.random.default_rng(8).uniform(-4, 3, 5000)).astype(np.float32)
    d = make_policy("swdpp", prune_ratio=prune_ratio).decide(make_snapshot(loss), 1, 0, 10)
    assert d.keep_prob is not None
    assert float(d.keep_prob.min()) == pytest.approx(0.75 * (1 - prune_ratio))
    assert float(d.weights.max()) <= 4.0 / (3.0 * (1 - prune_ratio)) * (1 + 1e-6)
    assert d.info["max_weight"] == float(d.weights.max())


def test_swdpp_keeps_each_sample_with_its_probability() -> None:
    rng = np.random.default_rng(4)
    n = 200
    snap = make_snapshot(rng.gamma(2.0, 1.0, n).astype(np.float32))
    policy = make_policy("swdpp", prune_ratio=0.5, alpha=2.0)
    p = policy.decide(snap, 0, 0, 10).keep_prob
    assert p is not None
    seeds = 800
    counts = sum(policy.decide(snap, e, 3, 10**6).keep.astype(np.int64) for e in range(seeds))
    sigma = np.sqrt(seeds * p * (1 - p)) + 1e-9
    assert np.all(np.abs(counts - seeds * p) <= 5 * sigma + 1)


def test_swdpp_solver_is_exact_on_hard_inputs() -> None:
    rng = np.random.default_rng(5)
    cases = [
        10.0 ** rng.uniform(-6, 6, 100_000),  # twelve decades
        np.r_[np.full(99_990, 1e-3), np.full(10, 1e4)],  # a few huge outliers saturate at 1
        np.ones(1000),
        np.array([1.0]),
    ]
    for x in cases:
        x32 = x.astype(np.float32)
        for share in (0.05, 0.3, 0.5, 0.95):
            target = share * len(x32)
            p, c = solve_keep_prob(x32, target, 0.01)
            assert float(p.astype(np.float64).sum()) == pytest.approx(max(target, 0.01 * len(x32)), rel=1e-5, abs=1e-4)
            np.testing.assert_allclose(p, np.clip(c * x32.astype(np.float64), 0.01, 1.0), rtol=1e-6, atol=1e-7)


def test_swdpp_budget_and_weight_clipping_are_reported() -> None:
    n = 100
    loss = np.linspace(0.01, 10.0, n).astype(np.float32)
    seen = np.arange(n) >= 60  # 60 unseen samples > (1 - 0.5) * 100
    d = make_policy("swdpp", prune_ratio=0.5).decide(make_snapshot(loss, seen), 0, 0, 10)
    assert not d.info["budget_met"] and d.keep[:60].all()
    clipped = make_policy("swdpp", prune_ratio=0.8, max_weight=3.0).decide(make_snapshot(loss), 0, 0, 10)
    assert clipped.weights.max() <= 3.0 and clipped.info["weights_clipped"] > 0


def test_swdpp_mixup_parameters() -> None:
    snap = make_snapshot(np.linspace(0.1, 1.0, 10).astype(np.float32))
    d = make_policy("swdpp", prune_ratio=0.6).decide(snap, 0, 0, 10)
    assert d.mixup_prob == swdpp.MIXUP_PROB and d.mixup_alpha == swdpp.MIXUP_ALPHA
    d = make_policy("swdpp", prune_ratio=0.6, mixup_prob=0.9, mixup_alpha=0.3).decide(snap, 0, 0, 10)
    assert d.mixup_prob == 0.9 and d.mixup_alpha == 0.3
    assert make_policy("swdpp", mixup_prob=0.9).decide(snap, 9, 0, 10).mixup_prob == 0.0  # annealing
    for name in POLICIES:
        if name != "swdpp":
            assert make_policy(name).decide(snap, 0, 0, 10).mixup_prob == 0.0


# -- parameters and state -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("random", {"prune_ratio": 1.0}, r"prune_ratio=1\.0 must be a finite number in \[0\.0, 1\.0\); pass e\.g\. prune_ratio=0\.5, or policy='random:0\.5'"),
        ("random", {"prune_ratio": -0.1}, r"prune_ratio=-0\.1 must be a finite number in \[0\.0, 1\.0\)"),
        ("random", {"prune_ratio": float("nan")}, r"prune_ratio=nan must be a finite number in \[0\.0, 1\.0\)"),
        ("random", {"prune_ratio": "0.3"}, r"prune_ratio='0\.3' must be a finite number"),
        ("random", {"prune_ratio": True}, r"prune_ratio=True must be a finite number"),
        ("infobatch", {"prune_ratio": 0.95}, r"prune_ratio=0\.95 must be a finite number in \[0\.0, 0\.9\]; InfoBatch keeps at least 10%"),
        ("infobatch", {"delta": 0.0}, r"delta=0\.0 must be a finite number in \(0\.0, 1\.0\]; pass e\.g\. delta=0\.875"),
        ("infobatch", {"delta": 1.5}, r"delta=1\.5 must be a finite number in \(0\.0, 1\.0\]"),
        ("infobatch", {"weight": "inverse"}, r"weight='inverse' is not one of exact, official"),
        ("full", {"prune_ratio": 0.3}, r"prune_ratio=0\.3 must be a finite number in \[0\.0, 0\.0\]; policy 'full' never prunes"),
        ("epsilon_greedy", {"epsilon": 1.5}, r"epsilon=1\.5 must be a finite number in \[0\.0, 1\.0\]"),
        ("epsilon_greedy", {"reweight": "yes"}, r"reweight='yes' must be True or False"),
        ("epsilon_greedy", {"prune_ratio": 1.0}, r"policy='epsilon_greedy:0\.5'"),
        ("ucb", {"c": -1.0}, r"c=-1\.0 must be a finite number >= 0\.0"),
        ("swdpp", {"alpha": 11}, r"alpha=11 must be a finite number in \[0\.0, 10\.0\]"),
        ("swdpp", {"p_min": 0.0}, r"p_min=0\.0 must be a finite number in \(0\.0, 0\.5\]"),
        ("swdpp", {"prune_ratio": 0.5, "p_min": 0.6}, r"p_min=0\.6 must be a finite number in \(0\.0, 0\.5\]; p_min above 1 - prune_ratio"),
        ("swdpp", {"mixup_prob": 1.2}, r"mixup_prob=1\.2 must be a finite number in \[0\.0, 1\.0\]"),
        ("swdpp", {"mixup_alpha": 0.0}, r"mixup_alpha=0\.0 must be a finite number > 0\.0"),
        ("swdpp", {"max_weight": 0.5}, r"max_weight=0\.5 must be a finite number >= 1\.0"),
        ("swdpp", {"prune_ratio": 0.3, "tau": 1}, r"policy 'swdpp' has no parameter\(s\) \['tau'\]; allowed: prune_ratio"),
        ("infobach", {}, r"unknown pruning policy 'infobach'; choose one of epsilon_greedy, full, infobatch"),
        ("infobatch:0.95", {}, r"prune_ratio=0\.95 must be a finite number in \[0\.0, 0\.9\]"),
        ("infobatch:half", {}, r"policy 'infobatch:half': the prune ratio after ':' must be a number in \[0, 1\), e\.g\. 'infobatch:0\.5'"),
        ("infobatch:0.5", {"prune_ratio": 0.3}, r"policy 'infobatch:0\.5' gives the prune ratio twice"),
        ("swdpp:1", {}, r"prune_ratio=1\.0 must be a finite number in \[0\.0, 1\.0\)"),
        ("full:0.3", {}, r"policy 'full' never prunes"),
        ("infobach:0.5", {}, r"unknown pruning policy 'infobach'; choose one of .*'infobatch:0\.7'"),
    ],
)
def test_bad_parameters_name_value_range_and_fix(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_policy(name, **params)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, 10), r"decide\(\): epoch=-1 must be an int >= 0; pass a whole number from 0 up"),
        ((0, -5, 10), r"seed=-5 must be an int >= 0"),
        ((0, 0, 0), r"num_epochs=0 must be an int >= 1"),
        ((1.5, 0, 10), r"epoch=1\.5 must be an int"),
        ((0, 2**128, 10), r"seed=.* must be an int in 0\.\.2\*\*128-1"),
    ],
)
def test_bad_decide_arguments(args: tuple[Any, Any, Any], message: str) -> None:
    snap = make_snapshot(np.ones(4, dtype=np.float32))
    for name in ("random", "infobatch"):
        with pytest.raises(ConfigError, match=message):
            make_policy(name).decide(snap, *args)
    with pytest.raises(ConfigError, match=r"needs a ScoreSnapshot, got ndarray; use store\.snapshot\(\)"):
        make_policy("random").decide(np.ones(4), 0, 0, 10)  # type: ignore[arg-type]


def test_policy_state_is_json_and_loads_strictly() -> None:
    p = make_policy("swdpp", prune_ratio=0.4, alpha=2.0)
    state = json.loads(json.dumps(p.state_dict()))
    assert state == {"name": "swdpp", "params": p.state_dict()["params"]} and state["params"]["alpha"] == 2.0
    make_policy("swdpp", prune_ratio=0.4, alpha=2.0).load_state_dict(state)
    with pytest.raises(CheckpointMismatchError, match=r"'swdpp' .*alpha.*2\.0.* \(in checkpoint\) vs 'swdpp' .*\(now\)"):
        make_policy("swdpp", prune_ratio=0.4).load_state_dict(state)
    with pytest.raises(CheckpointMismatchError, match=r"\(in checkpoint\) vs 'random'"):
        make_policy("random", prune_ratio=0.4).load_state_dict(state)
    with pytest.raises(CheckpointMismatchError, match=r"keys \['name', 'params', 'x'\]"):
        make_policy("swdpp", prune_ratio=0.4, alpha=2.0).load_state_dict({**state, "x": 1})


@pytest.mark.parametrize("name", ["random", "epsilon_greedy", "ucb", "infobatch", "swdpp"])
def test_one_default_ratio_and_ratio_by_name(name: str) -> None:
    assert make_policy(name).params["prune_ratio"] == DEFAULT_PRUNE_RATIO == 0.5
    by_name = make_policy(f"{name}:0.7")
    assert by_name.params == make_policy(name, prune_ratio=0.7).params and by_name.params["prune_ratio"] == 0.7
    assert make_policy(f" {name} :0.25").params["prune_ratio"] == 0.25  # spaces around the name are allowed
    assert parse_policy_name(f"{name}:0.7") == (name, 0.7) and parse_policy_name(name) == (name, None)


def test_ratio_by_name_through_the_loader(tmp_path: Any) -> None:
    from loader_data import write_dataset

    from shardprune.dataset import open_dataset
    from shardprune.loader import StreamingLoader

    write_dataset(tmp_path / "ds", n=40, per_shard=10)
    loader = StreamingLoader(open_dataset(str(tmp_path / "ds")), batch_size=8, policy="infobatch:0.7", num_epochs=4)
    try:
        assert loader.policy.state_dict() == make_policy("infobatch", prune_ratio=0.7).state_dict()
    finally:
        loader.close()
