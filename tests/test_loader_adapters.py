"""DataLoader and torchdata.nodes loops over the adapters prune, anneal and resume exactly.

The reference is the README's explicit loop (``loader.set_epoch(e)`` every epoch): a loop
that never calls ``set_epoch`` through an adapter must see exactly the same batches, and
a run stopped mid-epoch and resumed from its checkpoint must see the same remaining ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchdata.nodes import Loader, Prefetcher

from loader_data import N, write_dataset
from shardprune import ScoreStore, StreamingLoader, make_policy, open_dataset, weighted_loss
from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.loader.adapters import EpochSampler, LoaderDataset, as_iterable_dataset, as_node

EPOCHS = 4
BATCH = 32
#: InfoBatch anneals from epoch 0.75 * 4 = 3: epoch 0 has no scores, 1-2 prune, 3 keeps all.
DELTA = 0.75
#: Where the interrupted runs stop: after this many batches of this epoch.
STOP_EPOCH, STOP_AFTER = 1, 3

Steps = list[tuple[int, list[int], list[float]]]


def _loss(batch: dict[str, Any]) -> torch.Tensor:
    """A per-sample 'loss' fixed by the sample's features, so runs are comparable exactly."""
    return batch["npy"][:, 1].abs() + 0.1


class Run:
    """One dataset, score store and loader; the adapter under test is built by ``wrap``."""

    def __init__(
        self,
        data: Path,
        scores: Path,
        wrap: Callable[[StreamingLoader], Any] | None,
        num_workers: int = 0,
        plan_ahead: int = 64,
    ) -> None:
        ds = open_dataset(data)
        self.store = ScoreStore(scores, len(ds), ds.fingerprint, flush_interval_s=None)
        policy = make_policy("infobatch", delta=DELTA)
        self.loader = StreamingLoader(
            ds, batch_size=BATCH, policy=policy, store=self.store,
            num_epochs=EPOCHS,
            seed=3,
            num_workers=num_workers,
            plan_ahead=plan_ahead,
        )
        self.iterable = None if wrap is None else wrap(self.loader)
        self.steps: Steps = []
        self.stats: list[Any] = []

    def step(self, batch: dict[str, Any]) -> None:
        weighted_loss(batch, _loss(batch), self.store)
        self.steps.append((int(self.loader.epoch_stats.epoch), batch["ids"].tolist(), batch["weights"].tolist()))

    def close(self) -> dict[str, np.ndarray]:
        cols = {k: np.array(v) for k, v in self.store.snapshot(pin=False).columns().items()}
        self.store.close()
        self.loader.close()
        return cols


def _explicit(data: Path, scores: Path, plan_ahead: int = 64) -> tuple[Steps, list[Any], dict[str, np.ndarray]]:
    """The README loop: set_epoch before every epoch."""
    run = Run(data, scores, None, plan_ahead=plan_ahead)
    for epoch in range(EPOCHS):
        run.loader.set_epoch(epoch)
        for batch in run.loader:
            run.step(batch)
        run.stats.append(run.loader.epoch_stats)
    return run.steps, run.stats, run.close()


def _passes(run: Run, first: int = 0) -> Iterable[Iterable[dict[str, Any]]]:
    """One iterable per epoch pass over the adapter, as a training loop makes them."""
    for _ in range(first, EPOCHS):
        yield run.iterable


def _dataloader(loader: StreamingLoader) -> Any:
    return DataLoader(as_iterable_dataset(loader), batch_size=None, num_workers=0)


def _nodes(loader: StreamingLoader) -> Any:
    return Loader(as_node(loader))


def _nodes_prefetched(loader: StreamingLoader) -> Any:
    """Composed with a further node: a background thread fetching 3 batches ahead."""
    return Loader(Prefetcher(as_node(loader), prefetch_factor=3))


def _state(iterable: Any) -> dict[str, Any]:
    return iterable.state_dict() if isinstance(iterable, Loader) else iterable.dataset.state_dict()


def _load(iterable: Any, state: dict[str, Any]) -> None:
    if isinstance(iterable, Loader):
        iterable.load_state_dict(state)
    else:
        iterable.dataset.load_state_dict(state)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Steps, list[Any], dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("adapters")
    write_dataset(root / "data")
    return (root / "data", *_explicit(root / "data", root / "ref-scores"))


@pytest.mark.parametrize("wrap", [_dataloader, _nodes], ids=["DataLoader", "torchdata.nodes.Loader"])
def test_loop_without_set_epoch_prunes_like_the_explicit_loop(
    wrap: Callable[[StreamingLoader], Any], reference: Any, tmp_path: Path
) -> None:
    data, ref_steps, ref_stats, ref_cols = reference
    skipped = [s.samples_skipped for s in ref_stats]
    assert skipped[0] == 0 and skipped[3] == 0 and skipped[1] > 0 and skipped[2] > 0, skipped

    run = Run(data, tmp_path / "scores", wrap)
    for epoch_iterable in _passes(run):
        for batch in epoch_iterable:
            run.step(batch)
        run.stats.append(run.loader.epoch_stats)
    cols = run.close()
    assert [s.epoch for s in run.stats] == list(range(EPOCHS)), "each pass must plan the next epoch"
    assert [s.samples_skipped for s in run.stats] == skipped
    assert run.steps == ref_steps
    trained = sum(len(ids) for _, ids, _ in run.steps)
    assert int(cols["visits"].sum()) == trained == sum(s.samples_planned for s in ref_stats)
    np.testing.assert_array_equal(cols["loss"], ref_cols["loss"])


@pytest.mark.parametrize(
    ("wrap", "workers"),
    [(_dataloader, 0), (_nodes, 0), (_nodes_prefetched, 0), (_nodes, 2)],
    ids=["DataLoader", "torchdata.nodes.Loader", "nodes.Prefetcher", "nodes.Loader-2-workers"],
)
def test_resume_mid_epoch_yields_the_remaining_batches(
    wrap: Callable[[StreamingLoader], Any], workers: int, reference: Any, tmp_path: Path
) -> None:
    """Stop inside a pruned epoch (with the loader's worker processes running), resume, compare.

    A Prefetcher requests batches on its own thread, ahead of the reports, so the loader's
    background planning (which freezes the scores when batch n - k is requested) would see
    a timing-dependent set of reports: such a consumer runs with ``plan_ahead=0``, which
    freezes each epoch's scores when it starts, deterministically.
    """
    data, ref_steps, _, ref_cols = reference
    plan_ahead = 0 if wrap is _nodes_prefetched else 64
    if plan_ahead == 0:
        ref_steps, _, ref_cols = _explicit(data, tmp_path / "ref-scores", plan_ahead=0)
    scores = tmp_path / "scores"
    first = Run(data, scores, wrap, num_workers=workers, plan_ahead=plan_ahead)
    state: dict[str, Any] | None = None
    for epoch_iterable in _passes(first):
        for i, batch in enumerate(epoch_iterable):
            first.step(batch)
            if first.loader.epoch_stats.epoch == STOP_EPOCH and i == STOP_AFTER - 1:
                state = {"loader": _state(first.iterable), "scores": first.store.state_dict()}
                break
        if state is not None:
            break
    assert state is not None
    done = len(first.steps)
    first.close()

    resumed = Run(data, scores, wrap, num_workers=workers, plan_ahead=plan_ahead)
    resumed.store.load_state_dict(state["scores"])
    _load(resumed.iterable, state["loader"])
    for epoch_iterable in _passes(resumed, STOP_EPOCH):
        for batch in epoch_iterable:
            resumed.step(batch)
    cols = resumed.close()
    assert resumed.steps == ref_steps[done:]
    np.testing.assert_array_equal(cols["loss"], ref_cols["loss"])
    np.testing.assert_array_equal(cols["visits"], ref_cols["visits"])


def test_state_at_the_end_of_an_epoch_resumes_at_the_next(reference: Any, tmp_path: Path) -> None:
    data, ref_steps, ref_stats, _ = reference
    run = Run(data, tmp_path / "scores", as_iterable_dataset)
    ds = run.iterable
    assert isinstance(ds, LoaderDataset)
    for batch in ds:
        run.step(batch)
    state, scores = ds.state_dict(), run.store.state_dict()
    assert state["epoch"] == 0 and state["batches_yielded"] == ref_stats[0].batches
    run.close()
    again = Run(data, tmp_path / "scores", as_iterable_dataset)
    again.store.load_state_dict(scores)
    again.iterable.load_state_dict(state)
    for batch in again.iterable:
        again.step(batch)
    again.close()
    assert {e for e, _, _ in again.steps} == {1}
    assert again.steps == [s for s in ref_steps if s[0] == 1]


def test_sampler_set_epoch_plans_the_loader_epoch(reference: Any, tmp_path: Path) -> None:
    data, ref_steps, _, _ = reference
    run = Run(data, tmp_path / "scores", None)
    sampler = run.loader.sampler
    assert isinstance(sampler, EpochSampler)
    sampler.set_epoch(0)
    assert run.loader.epoch_stats.epoch == 0
    for batch in run.loader:
        run.step(batch)
    sampler.set_epoch(1)
    assert run.loader.epoch_stats.epoch == 1
    for batch in run.loader:
        run.step(batch)
    run.close()
    assert run.steps == [s for s in ref_steps if s[0] <= 1]


def test_dataloader_workers_are_refused(reference: Any, tmp_path: Path) -> None:
    data = reference[0]
    loader = StreamingLoader(open_dataset(data), batch_size=BATCH, num_epochs=2)
    dl = DataLoader(as_iterable_dataset(loader), batch_size=None, num_workers=1)
    with pytest.raises(ConfigError, match=r"num_workers=0"):
        next(iter(dl))
    loader.close()


def test_passes_past_num_epochs_anneal_like_the_loader(reference: Any) -> None:
    """A framework that runs more epochs than the loader was built for gets annealing
    epochs (all data, weight 1), as a plain loop over the loader does, not an error."""
    loader = StreamingLoader(open_dataset(reference[0]), batch_size=BATCH * 4, num_epochs=2, policy="random")
    ds = as_iterable_dataset(loader)
    assert [sum(1 for _ in ds) for _ in range(2)] == [N // (BATCH * 4)] * 2
    third = list(ds)
    assert loader.epoch_stats.epoch == 2
    assert loader.epoch_stats.samples_skipped == 0
    assert len(third) == N // (BATCH * 4)
    assert all(bool((b["weights"] == 1).all()) for b in third)
    with pytest.raises(ConfigError, match=r"epoch=-1 must be an int >= 0"):
        ds.set_epoch(-1)
    loader.close()


def test_foreign_state_is_refused(reference: Any) -> None:
    a = StreamingLoader(open_dataset(reference[0]), batch_size=BATCH, num_epochs=2, seed=1)
    b = StreamingLoader(open_dataset(reference[0]), batch_size=BATCH, num_epochs=2, seed=2)
    with pytest.raises(CheckpointMismatchError, match=r"seed: 1 \(in checkpoint\) vs 2 \(now\)"):
        as_node(b).reset(as_node(a).state_dict())
    a.close()
    b.close()
