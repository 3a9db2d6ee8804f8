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


def test_score_store_and_custom_sinks_satisfy_the_protocol(tmp_path: Path) -> None:
    with open_store(tmp_path / "s") as store:
        sink: ScoreSink = store  # checked by mypy too
        assert isinstance(sink, ScoreSink)
    assert isinstance(Recorder(), ScoreSink)
    assert not isinstance(object(), ScoreSink)


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
