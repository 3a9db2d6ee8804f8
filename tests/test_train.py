"""weighted_loss: the weighting, where the reports go, Mixup accounting, dtypes and bad input."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from shardprune.errors import ConfigError
from shardprune.scores import ScoreStore
from shardprune.train import DEFAULT_WEIGHT_MODE, ScoreSink, weighted_loss

FP = "train-test-dataset"


def open_store(path: Path, n: int = 64) -> ScoreStore:
    return ScoreStore(path, n, FP, flush_interval_s=None, chunk_size=16)


class Recorder:
    """A ScoreSink that keeps what it was sent (e.g. what a distributed wrapper would forward)."""

    def __init__(self) -> None:
        self.updates: list[tuple[list[int], list[float]]] = []
        self.skipped: list[tuple[int, str]] = []

    def update(self, ids: Any, losses: Any) -> None:
        self.updates.append((torch.as_tensor(ids).tolist(), torch.as_tensor(losses).float().tolist()))

    def record_skipped(self, count: int, reason: str) -> None:
        self.skipped.append((count, reason))


def test_score_store_and_custom_sinks_receive_the_same_reports(tmp_path: Path) -> None:
    batch = {"ids": torch.tensor([3, 5, 7, 9]), "weights": torch.ones(4), "mixed": torch.tensor([False, True, False, False])}
    losses = torch.tensor([0.5, 1.5, 2.5, 3.5])
    recorder = Recorder()
    with open_store(tmp_path / "s") as store:
        sinks: list[ScoreSink] = [store, recorder]  # both satisfy the protocol (mypy checks it)
        for sink in sinks:
            weighted_loss(batch, losses, sink)
        snap = store.snapshot()
        assert store.stats["skipped_mixed"] == 1
    assert recorder.updates == [([3, 7, 9], [0.5, 2.5, 3.5])] and recorder.skipped == [(1, "mixed")]
    assert np.flatnonzero(snap.visits).tolist() == [3, 7, 9]
    assert snap.loss[[3, 7, 9]].tolist() == [0.5, 2.5, 3.5]


@pytest.mark.parametrize(
    ("mode", "value", "grad"),
    [
        ("unbiased", 13.0 / 4, [0.5, 0.5, 0.25, 0.25]),  # mean(w * l): w_i / B
        ("normalized", 13.0 / 6, [2 / 6, 2 / 6, 1 / 6, 1 / 6]),  # sum(w * l) / sum(w): w_i / sum(w)
    ],
)
def test_each_mode_applies_the_weights_as_documented(mode: str, value: float, grad: list[float]) -> None:
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    batch = {"ids": torch.arange(4), "weights": torch.tensor([2.0, 2.0, 1.0, 1.0])}
    out = weighted_loss(batch, loss, None, mode=mode)
    assert out.item() == pytest.approx(value)
    out.backward()
    assert loss.grad is not None
    assert loss.grad.tolist() == pytest.approx(grad)
    plain = weighted_loss({"ids": torch.arange(4)}, torch.tensor([1.0, 2.0, 3.0, 4.0]), None, mode=mode)
    assert plain.item() == 2.5


def test_the_default_mode_is_normalized() -> None:
    assert DEFAULT_WEIGHT_MODE == "normalized"
    batch = {"ids": torch.arange(2), "weights": torch.tensor([1.0, 3.0])}
    loss = torch.tensor([4.0, 8.0])
    assert weighted_loss(batch, loss, None).item() == weighted_loss(batch, loss, None, mode="normalized").item() == 7.0


def test_empty_batch_gives_zero_not_nan() -> None:
    batch = {"ids": torch.zeros(0, dtype=torch.int64), "weights": torch.zeros(0)}
    assert weighted_loss(batch, torch.zeros(0), None, mode="normalized").item() == 0.0


@pytest.mark.parametrize("mode", ["mean", "Normalized", "", None, 1])
def test_bad_mode_names_the_value_and_the_choices(mode: Any) -> None:
    batch = {"ids": torch.arange(2), "weights": torch.ones(2)}
    with pytest.raises(ConfigError, match=r"mode=.* is not one of normalized, unbiased"):
        weighted_loss(batch, torch.ones(2), None, mode=mode)


def test_weights_from_numpy_and_reports_are_detached(tmp_path: Path) -> None:
    rec = Recorder()
    loss = torch.tensor([0.5, 1.5], requires_grad=True)
    out = weighted_loss({"ids": np.array([7, 3]), "weights": np.array([1.0, 3.0], dtype=np.float32)}, loss, rec)
    assert out.item() == pytest.approx((0.5 + 4.5) / 4)
    assert rec.updates == [([7, 3], [0.5, 1.5])]
    with open_store(tmp_path / "s") as store:
        weighted_loss({"ids": torch.tensor([7, 3])}, loss, store)
        snap = store.snapshot()
    assert snap.loss[7] == 0.5 and snap.loss[3] == 1.5


class IdSquares(Dataset[dict[str, torch.Tensor]]):
    """Sample i is x = i; its loss under the test's model is 0.25 * i."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"ids": torch.tensor(i, dtype=torch.int64), "x": torch.tensor(float(i))}


def prefetch(loader: Any, depth: int) -> Iterator[tuple[dict[str, torch.Tensor], list[int]]]:
    """Yield each batch while ``depth`` later batches are already fetched (as Accelerate does).

    Also yields the ids of the batch fetched most recently: what the official InfoBatch
    would credit the training step's losses to.
    """
    ahead: collections.deque[dict[str, torch.Tensor]] = collections.deque()
    it = iter(loader)
    for batch in it:
        ahead.append(batch)
        if len(ahead) > depth:
            yield ahead.popleft(), ahead[-1]["ids"].tolist()
    while ahead:
        yield ahead.popleft(), ahead[-1]["ids"].tolist() if ahead else []


@pytest.mark.parametrize("workers", [0, 2])
def test_reports_go_to_the_batch_ids_under_prefetching(tmp_path: Path, workers: int) -> None:
    n = 60
    kw: dict[str, Any] = {"num_workers": workers, "prefetch_factor": 3} if workers else {}
    loader = DataLoader(IdSquares(n), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0), **kw)
    scale = torch.nn.Parameter(torch.tensor(0.25))
    wrong_credits = 0
    with open_store(tmp_path / "s", n) as store:
        for batch, last_fetched in prefetch(loader, depth=3):
            per_sample = scale * batch["x"]
            weighted_loss(batch, per_sample, store).backward()
            wrong_credits += last_fetched != batch["ids"].tolist()
        snap = store.snapshot()
    assert wrong_credits >= n // 4 - 3  # "most recently fetched" would be wrong for these steps
    np.testing.assert_array_equal(snap.visits, np.ones(n))
    np.testing.assert_allclose(snap.loss, 0.25 * np.arange(n), rtol=1e-6)


def test_mixed_samples_are_counted_not_reported(tmp_path: Path) -> None:
    rec = Recorder()
    batch = {
        "ids": torch.tensor([10, 11, 12, 13]),
        "weights": torch.ones(4),
        "mixed": torch.tensor([True, False, True, False]),
    }
    weighted_loss(batch, torch.tensor([1.0, 2.0, 3.0, 4.0]), rec)
    assert rec.updates == [([11, 13], [2.0, 4.0])]
    assert rec.skipped == [(2, "mixed")]
    with open_store(tmp_path / "s") as store:
        out = weighted_loss(batch, torch.tensor([1.0, 2.0, 3.0, 4.0]), store)
        weighted_loss({**batch, "mixed": torch.ones(4, dtype=torch.bool)}, torch.ones(4), store)
        weighted_loss({**batch, "mixed": np.zeros(4, dtype=bool)}, torch.full((4,), 9.0), store)
        snap = store.snapshot()
        assert store.stats["skipped_mixed"] == 2 + 4
    assert out.item() == 2.5  # mixed samples still train, weighted like the rest
    assert snap.visits[10:14].tolist() == [1, 2, 1, 2]
    assert snap.loss[10:14].tolist() == [9.0, 9.0, 9.0, 9.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_losses(tmp_path: Path, dtype: torch.dtype) -> None:
    loss = torch.tensor([0.1, 2.5, 7.0, 1000.0], dtype=dtype, requires_grad=True)
    batch = {"ids": torch.tensor([1, 2, 3, 40]), "weights": torch.tensor([1.0, 2.0, 1.0, 0.5])}
    with open_store(tmp_path / "s") as store:
        out = weighted_loss(batch, loss, store)
        snap = store.snapshot()
    assert out.dtype == dtype
    expected = ((batch["weights"] / 4.5).to(dtype) * loss.detach()).sum()
    assert out.item() == expected.item()
    assert weighted_loss(batch, loss.detach(), None, mode="unbiased").item() == (batch["weights"].to(dtype) * loss.detach()).mean().item()
    out.backward()
    assert loss.grad is not None and loss.grad.dtype == dtype
    np.testing.assert_array_equal(snap.loss[[1, 2, 3, 40]], loss.detach().float().numpy())


def test_bad_shapes_are_config_errors() -> None:
    rec = Recorder()
    ids = torch.arange(3)
    with pytest.raises(ConfigError, match=r"per_sample_loss must be a 1-D tensor .* got \(3, 2\); .*reduction='none'"):
        weighted_loss({"ids": ids}, torch.ones(3, 2), rec)
    with pytest.raises(ConfigError, match=r"got \(\); .*reduction='none'"):
        weighted_loss({"ids": ids}, torch.tensor(1.0), rec)
    with pytest.raises(ConfigError, match=r"got <class 'list'>"):
        weighted_loss({"ids": ids}, [1.0, 2.0, 3.0], rec)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch has no 'ids' field"):
        weighted_loss({"x": ids}, torch.ones(3), rec)
    with pytest.raises(ConfigError, match="batch has 3 ids but per_sample_loss has 4 entries"):
        weighted_loss({"ids": ids}, torch.ones(4), rec)
    with pytest.raises(ConfigError, match=r"batch weights have shape \(2,\), loss has \(3,\)"):
        weighted_loss({"ids": ids, "weights": torch.ones(2)}, torch.ones(3), rec)
    with pytest.raises(ConfigError, match=r"batch 'mixed' has shape \(4,\), loss has \(3,\)"):
        weighted_loss({"ids": ids, "mixed": torch.zeros(4, dtype=torch.bool)}, torch.ones(3), rec)
    assert rec.updates == [] and rec.skipped == []


# -- the two weighting modes: what each does to the gradient -------------------------------

import math  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shardprune.policies import make_policy  # noqa: E402
from shardprune.scores.snapshot import ScoreSnapshot, fresh_columns  # noqa: E402

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def linear_losses(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error of a linear model: a loss whose per-sample gradients differ."""
    return 0.5 * (x @ theta - y) ** 2


@PROPERTY
@given(
    st.lists(st.floats(1.0, 20.0), min_size=1, max_size=64),
    st.floats(-3.0, 3.0),
    st.sampled_from(["unbiased", "normalized"]),
)
def test_step_size_when_every_sample_has_the_same_gradient(weights: list[float], slope: float, mode: str) -> None:
    # Every sample's loss is slope * theta: full training's step is slope, whatever the batch.
    theta = torch.zeros(1, requires_grad=True)
    w = torch.tensor(weights)
    losses = slope * theta.expand(len(weights)).clone() + torch.arange(len(weights), dtype=torch.float32)
    weighted_loss({"ids": torch.arange(len(weights)), "weights": w}, losses, None, mode=mode).backward()
    assert theta.grad is not None
    # normalized keeps full training's step exactly; unbiased multiplies it by the mean weight.
    expected = slope if mode == "normalized" else slope * float(w.mean())
    assert float(theta.grad) == pytest.approx(expected, rel=1e-5, abs=1e-6)


@PROPERTY
@given(st.integers(1, 48), st.integers(0, 2**32 - 1), st.floats(1.0, 20.0))
def test_normalized_step_is_a_convex_combination_of_per_sample_gradients(n: int, seed: int, w_max: float) -> None:
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float64)
    y = torch.tensor(rng.normal(size=n), dtype=torch.float64)
    w = torch.tensor(rng.uniform(1.0, w_max, n), dtype=torch.float64)
    theta = torch.tensor(rng.normal(size=3), dtype=torch.float64, requires_grad=True)
    weighted_loss({"ids": torch.arange(n), "weights": w}, linear_losses(theta, x, y), None, mode="normalized").backward()
    per_sample = (x @ theta.detach() - y)[:, None] * x  # gradient of each sample's loss
    assert theta.grad is not None
    np.testing.assert_allclose(theta.grad.numpy(), ((w / w.sum())[:, None] * per_sample).sum(0).numpy(), rtol=1e-9)
    # So its norm never exceeds the largest per-sample gradient's, however large the weights.
    assert float(theta.grad.norm()) <= float(per_sample.norm(dim=1).max()) * (1 + 1e-9)


def seen_snapshot(loss: np.ndarray) -> ScoreSnapshot:
    cols = fresh_columns(len(loss))
    cols["loss"][:] = loss
    cols["loss_ema"][:] = loss
    cols["delta_ema"][:] = np.abs(np.sin(np.arange(len(loss)))).astype(np.float32)
    cols["visits"][:] = 2
    cols["last_epoch"][:] = 0
    return ScoreSnapshot.from_columns(cols, copy=False)


def epoch_gradient(
    decision: Any, x: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor, batch_size: int, mode: str
) -> torch.Tensor:
    """Sum over the epoch's batches of grad(B_b * weighted_loss(batch_b)), at a fixed theta."""
    kept = np.flatnonzero(decision.keep)
    theta = theta0.clone().requires_grad_(True)
    for start in range(0, len(kept), batch_size):
        ids = torch.from_numpy(kept[start : start + batch_size])
        batch = {"ids": ids, "weights": torch.from_numpy(decision.weights[ids.numpy()]).double()}
        losses = linear_losses(theta, x[ids], y[ids])
        (len(ids) * weighted_loss(batch, losses, None, mode=mode)).backward()
    return theta.grad if theta.grad is not None else torch.zeros_like(theta0)  # nothing kept


@PROPERTY
@given(
    st.sampled_from(["random", "infobatch", "swdpp", "epsilon_greedy", "ucb"]),
    st.sampled_from([0.3, 0.5, 0.7]),
    st.integers(8, 80),
    st.integers(0, 2**32 - 1),
)
def test_unbiased_mode_gives_the_full_gradient_in_expectation(name: str, r: float, n: int, seed: int) -> None:
    """E over the policy's draws of the epoch's summed gradient equals full training's, exactly.

    Each kept sample's weight is a fixed number given the scores (it does not depend on the
    draw) and equals 1 / P(kept), and the unbiased mode realises sum over kept of w_i * g_i;
    so the expectation is sum_i P(kept_i) * (1 / P(kept_i)) * g_i = sum_i g_i.
    """
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(size=(n, 3)))
    y = torch.tensor(rng.normal(size=n))
    theta0 = torch.tensor(rng.normal(size=3))
    snap = seen_snapshot(rng.gamma(2.0, 1.0, n).astype(np.float32))
    policy = make_policy(name, prune_ratio=r)
    per_sample = ((x @ theta0 - y)[:, None] * x).numpy()
    weight_when_kept: dict[int, float] = {}
    for draw_seed in range(12):
        d = policy.decide(snap, 1, draw_seed, 10)
        if not d.info.get("unbiased", True):
            return  # a decision that says it is biased (greedy with no exploration left)
        assert d.keep_prob is not None and (d.keep_prob > 0).all()
        for i in np.flatnonzero(d.keep).tolist():
            w = float(d.weights[i])
            assert weight_when_kept.setdefault(i, w) == w  # a fixed weight, whatever the draw
            assert w * float(d.keep_prob[i]) == pytest.approx(1.0, rel=1e-5)
        realised = epoch_gradient(d, x, y, theta0, batch_size=7, mode="unbiased")
        manual = (d.weights[d.keep].astype(np.float64)[:, None] * per_sample[d.keep]).sum(0)
        np.testing.assert_allclose(realised.numpy(), manual, rtol=1e-5, atol=1e-8)


def test_unbiased_mode_monte_carlo_matches_the_full_gradient() -> None:
    # The same claim measured: 3000 epochs of SwDPP's draws at r = 0.5 average to the full gradient.
    rng = np.random.default_rng(11)
    n = 60
    x = torch.tensor(rng.normal(size=(n, 3)))
    y = torch.tensor(rng.normal(size=n))
    theta0 = torch.tensor(rng.normal(size=3))
    snap = seen_snapshot(rng.gamma(2.0, 1.0, n).astype(np.float32))
    policy = make_policy("swdpp", prune_ratio=0.5)
    per_sample = ((x @ theta0 - y)[:, None] * x).numpy()
    full = per_sample.sum(0)
    draws = np.stack(
        [
            (np.where(d.keep, d.weights, 0.0).astype(np.float64)[:, None] * per_sample).sum(0)
            for d in (policy.decide(snap, 1, s, 10) for s in range(3000))
        ]
    )
    stderr = draws.std(0, ddof=1) / math.sqrt(len(draws))
    assert (np.abs(draws.mean(0) - full) <= 5 * stderr).all()
    # One realised epoch through weighted_loss equals its row above (the loss realises the sum).
    d0 = policy.decide(snap, 1, 0, 10)
    np.testing.assert_allclose(epoch_gradient(d0, x, y, theta0, 8, "unbiased").numpy(), draws[0], rtol=1e-5)
    # The normalized mode does not claim this: its epoch sum is smaller by about the mean weight.
    assert not np.allclose(epoch_gradient(d0, x, y, theta0, 8, "normalized").numpy(), draws[0], rtol=1e-2)


def test_normalized_half_precision_does_not_overflow() -> None:
    loss = torch.full((256,), 60000.0, dtype=torch.float16)  # sum(w * l) would be inf in float16
    batch = {"ids": torch.arange(256), "weights": torch.full((256,), 4.0)}
    assert weighted_loss(batch, loss, None, mode="normalized").item() == 60000.0
