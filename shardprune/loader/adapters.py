"""Adapters that let any training loop drive the loader's epochs, so pruning never silently stops.

A framework that never calls :meth:`StreamingLoader.set_epoch` would otherwise replay
epoch 0 forever: unpruned, in the same order, with no warning. Each adapter here makes
the epoch advance through the hook that framework already calls:

1. :class:`EpochSampler` (``StreamingLoader.sampler``): Lightning and Accelerate call
   ``dataloader.sampler.set_epoch(e)`` before each epoch; it reaches ``loader.set_epoch(e)``.
2. :class:`LoaderDataset` (:func:`as_iterable_dataset`): a
   ``torch.utils.data.IterableDataset`` for ``DataLoader(ds, batch_size=None, num_workers=0)``.
   Each pass over it runs the next epoch unless :meth:`LoaderDataset.set_epoch` chose one.
3. :class:`LightningLoader` (:func:`as_lightning`): for ``lightning.Trainer.fit``: no
   fixed length (Lightning would cut every epoch to the first one's), ``sampler.set_epoch``,
   and a state that leaves out the batch Lightning fetched ahead.
4. :class:`LoaderNode` (:func:`as_node`): a ``torchdata.nodes.BaseNode`` for
   ``torchdata.nodes.Loader``. ``reset(None)`` starts the next epoch; ``reset(state)``
   resumes inside the epoch of a :meth:`LoaderNode.get_state`.

Rules of :class:`EpochCursor`, which 2-4 share (an epoch is chosen when a pass starts):

1. An epoch chosen explicitly (``set_epoch``) or by loading a state whose epoch is not
   finished is the one the next pass runs, from the state's cursor.
2. Otherwise the pass runs the epoch after the last one a pass ran (0 for the first), and
   calls ``loader.set_epoch`` for it, which freezes the scores reported so far.
3. A state taken after the last batch of epoch e resumes at epoch e + 1.

The adapters drive ``set_epoch`` themselves, so they behave the same whether or not the
loader also advances its own epoch on ``iter()``: an explicit ``set_epoch`` always wins.
Their state is the loader's own :meth:`StreamingLoader.state_dict` (a position in the
plan, so resuming yields exactly the remaining batches); the score store is
checkpointed beside it with ``store.state_dict()``, as in a plain loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset
from torchdata.nodes import BaseNode

from shardprune.errors import ConfigError
from shardprune.loader.collate import Batch
from shardprune.validate import check_int

if TYPE_CHECKING:
    from shardprune.loader.streaming import StreamingLoader

__all__ = [
    "EpochCursor",
    "EpochSampler",
    "LightningLoader",
    "LoaderDataset",
    "LoaderNode",
    "as_iterable_dataset",
    "as_lightning",
    "as_node",
]


class EpochSampler:
    """The ``.sampler`` of a :class:`StreamingLoader`: ``set_epoch`` reaches the loader.

    Lightning's fit loop calls ``dataloader.sampler.set_epoch(epoch)`` before every
    training epoch (``lightning.fabric.utilities.data._set_sampler_epoch``), and so does
    Accelerate's ``DataLoaderShard.set_epoch``; they never call the loader's own. This
    object is what they find there. It samples nothing itself: the loader's plan does.

    Args:
        loader: The loader whose epochs this drives.
    """

    def __init__(self, loader: StreamingLoader) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch`` on the loader (see :meth:`StreamingLoader.set_epoch`)."""
        self.loader.set_epoch(epoch)

    def __repr__(self) -> str:
        return f"EpochSampler({self.loader!r})"


class EpochCursor:
    """Which epoch the next pass over a loader runs (the rules in the module docstring).

    Args:
        loader: The loader whose epochs this chooses.
    """

    def __init__(self, loader: StreamingLoader) -> None:
        self.loader = loader
        self._chosen: int | None = None
        self._last: int | None = None

    @property
    def last_epoch(self) -> int | None:
        """The epoch the most recent pass ran (None before the first pass)."""
        return self._last

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch`` now; the next pass runs it (rule 1)."""
        epoch = check_int("epoch", epoch, 0, fix="pass the epoch to run next, counted from 0")
        self.loader.set_epoch(epoch)
        self._chosen = epoch

    def start(self) -> int:
        """Plan (if not chosen already) and return the epoch of the pass that starts now."""
        if self._chosen is not None:
            epoch, self._chosen = self._chosen, None
        else:
            # Past num_epochs the loader serves annealing epochs (all data), as a plain loop would.
            epoch = 0 if self._last is None else self._last + 1
            self.loader.set_epoch(epoch)
        self._last = epoch
        return epoch

    def state_dict(self) -> dict[str, Any]:
        """The loader's state: its epoch and the batches handed out in it."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``: inside its epoch, or at the next epoch if it was finished (rule 3).

        Raises:
            CheckpointMismatchError: the loader refuses the state (see
                :meth:`StreamingLoader.load_state_dict`).
        """
        self.loader.load_state_dict(state)
        # Read back from the loader, which validated the state and planned its epoch.
        epoch = self.loader.epoch_stats.epoch
        if self.loader.epoch_stats.batches >= len(self.loader):
            self._chosen, self._last = None, epoch
        else:
            self._chosen, self._last = epoch, epoch - 1


class _CursorAdapter:
    """What the pass-per-epoch adapters share: the loader and the :class:`EpochCursor` over it."""

    def __init__(self, loader: StreamingLoader) -> None:
        super().__init__()
        self.loader = loader
        self.cursor = EpochCursor(loader)

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` on the next pass (it is planned now)."""
        self.cursor.set_epoch(epoch)


class LoaderDataset(_CursorAdapter, IterableDataset[Batch]):
    """A ``torch.utils.data.IterableDataset`` whose items are the loader's batches.

    Use it as ``DataLoader(as_iterable_dataset(loader), batch_size=None, num_workers=0)``:

    * ``batch_size=None``: each item already is a batch (ids, weights, fields); a
      DataLoader batch size would stack batches into batches of batches.
    * ``num_workers=0``: the loader has its own worker processes (its ``num_workers``),
      which read only the kept samples' bytes in plan order. DataLoader workers would
      each run a copy of the whole loader, so every batch would come once per worker, and
      their copies could not report to the score store, which lives in this process. A
      pass inside a DataLoader worker raises :class:`ConfigError`.

    Each pass (``for batch in dataloader``) runs the next epoch, so a loop that never
    calls ``set_epoch`` still gets a freshly planned, pruned epoch each time; call
    :meth:`set_epoch` to choose one.

    State format: :meth:`state_dict` is the loader's ``state_dict()``; after
    :meth:`load_state_dict` the next pass yields exactly the remaining batches.

    Args:
        loader: The loader to adapt.
    """

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            raise ConfigError(
                f"a shardprune loader was iterated inside DataLoader worker {info.id} of {info.num_workers}; "
                "build the DataLoader with num_workers=0 (the StreamingLoader has its own workers: pass "
                "num_workers to StreamingLoader instead)"
            )
        self.cursor.start()
        yield from self.loader

    def __len__(self) -> int:
        """Batches in the loader's current epoch."""
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        """The loader's state (epoch and batches handed out)."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state`` on the next pass (the next epoch if ``state``'s was finished)."""
        self.cursor.load_state_dict(state)


def as_iterable_dataset(loader: StreamingLoader) -> LoaderDataset:
    """``loader`` as an ``IterableDataset`` for ``DataLoader(ds, batch_size=None, num_workers=0)``."""
    return LoaderDataset(loader)


class LoaderNode(_CursorAdapter, BaseNode[Batch]):
    """A ``torchdata.nodes.BaseNode`` that yields the loader's batches, one epoch per reset.

    ``torchdata.nodes.Loader(as_node(loader))`` calls ``reset(None)`` at the start of every
    pass, which runs the next epoch (or the one chosen with :meth:`set_epoch` before it);
    ``Loader.load_state_dict`` hands :meth:`get_state`'s dict to ``reset``, which resumes
    inside that epoch, or at the next one if it was finished. Further nodes (``Mapper``,
    ``Prefetcher``) compose on top of it.

    State format: the loader's ``state_dict()`` (JSON-able: epoch, batches handed out,
    configuration and snapshot fingerprints). Determinism: as the loader's: a resumed pass
    yields the same remaining batches as an uninterrupted one.

    Args:
        loader: The loader to adapt.
    """

    def __init__(self, loader: StreamingLoader) -> None:
        super().__init__(loader)
        self._it: Iterator[Batch] | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        """Start the next epoch, or resume at ``initial_state`` (from :meth:`get_state`)."""
        super().reset(initial_state)
        self._close()
        if initial_state is not None:
            self.cursor.load_state_dict(initial_state)
        self.cursor.start()
        self._it = iter(self.loader)

    def next(self) -> Batch:
        """The next batch of the epoch; StopIteration at its end."""
        if self._it is None:
            raise StopIteration
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        """The loader's state: its epoch and the batches handed out in it."""
        return self.cursor.state_dict()

    def _close(self) -> None:
        it, self._it = self._it, None
        close = getattr(it, "close", None)
        if callable(close):
            close()  # stops a half-read epoch's workers before the next epoch starts


def as_node(loader: StreamingLoader) -> LoaderNode:
    """``loader`` as a ``torchdata.nodes`` source node for ``torchdata.nodes.Loader``."""
    return LoaderNode(loader)


class LightningLoader:
    """The loader as Lightning's ``train_dataloaders``: every epoch whole, mid-epoch resume exact.

    Lightning reads a loader's length once, when ``fit`` starts, and treats it as the
    length of every epoch; a pruned run's epochs differ in length (epoch 0 reads all,
    pruned epochs fewer batches, annealing epochs all again), so a sized loader would have
    later, longer epochs cut at the first one's length. This adapter has no ``__len__``,
    so Lightning ends each epoch at its real end (and fetches one batch ahead to know
    which batch is the last, which keeps epoch-end validation and schedulers right).

    ``sampler.set_epoch`` (called by Lightning before each epoch) plans that epoch; a pass
    without it runs the next one (:class:`EpochCursor`). Lightning fetches the first batch
    of a ``fit`` before it calls ``set_epoch``, so the epoch a resumed ``fit`` starts with
    must be known by then: restore the state with
    :class:`shardprune.loader.lightning_callback.PruningCheckpoint`, which Lightning loads
    before training starts (Lightning itself reloads a loader's state only for a
    checkpoint taken mid-epoch). The batches Lightning fetched ahead (``lookahead``, its
    ``_PrefetchDataFetcher`` default of 1) are not counted as handed out, so a resumed
    ``fit(ckpt_path=...)`` trains exactly the batches the interrupted one had not.

    State format: the loader's ``state_dict()`` with ``batches_yielded`` the batches
    Lightning trained on.

    Args:
        loader: The loader to adapt.
        lookahead: Batches the framework fetches ahead of the one it trains on (default 1).
    """

    def __init__(self, loader: StreamingLoader, lookahead: int = 1) -> None:
        self.loader = loader
        self.lookahead = check_int("lookahead", lookahead, 0, fix="pass the framework's prefetch count (1)")
        self.cursor = EpochCursor(loader)
        self._running: int | None = None
        self._exhausted = False
        self._loaded: dict[str, Any] | None = None

    @property
    def sampler(self) -> LightningLoader:
        """Lightning calls ``dataloader.sampler.set_epoch``; this object takes the call."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Plan ``epoch`` for the next pass; a no-op when the running pass is that epoch.

        Lightning fetches the first batch before it calls ``set_epoch`` for the first
        epoch of a ``fit`` (and of a resume); that pass already runs the epoch.

        Raises:
            ConfigError: the running pass is another epoch: a batch of it was already
                handed out, so Lightning resumed without this loader's state.
        """
        if self._running is not None:
            if self._running == epoch:
                return
            raise ConfigError(
                f"Lightning starts epoch {epoch}, but this loader already handed out a batch of epoch "
                f"{self._running}: the fit resumed from a checkpoint without the loader's position. Pass "
                "callbacks=[PruningCheckpoint(data, store)] (shardprune.loader.lightning_callback) to the "
                "Trainer that writes and the one that resumes"
            )
        self.cursor.set_epoch(epoch)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.cursor.start()
        self._running, self._exhausted, self._loaded = epoch, False, None
        try:
            yield from self.loader
            self._exhausted = True
        finally:
            self._running = None

    def state_dict(self) -> dict[str, Any]:
        """The loader's state, less the batches fetched ahead but not yet trained on."""
        state = dict(self.cursor.state_dict())
        if self._running is not None and not self._exhausted:
            state["batches_yielded"] = max(int(state["batches_yielded"]) - self.lookahead, 0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state`` (see :meth:`EpochCursor.load_state_dict`).

        Loading the state that is already loaded is a no-op: on a mid-epoch resume
        Lightning hands the loader its state again after :class:`PruningCheckpoint` did.
        Under DDP Lightning hands every rank rank 0's state (it writes rank 0's only); after
        PruningCheckpoint restored this rank's own, rank 0's copy of the same position is a
        no-op too (without it, the loader resumes this rank's share at rank 0's position).
        """
        if self._loaded is not None and _same_position(state, self._loaded):
            return
        self.cursor.load_state_dict(state)
        self._loaded = dict(state)


def _same_position(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same epoch and batch of the same run, possibly of another rank (configs equal but for the rank)."""
    if a == b:
        return True
    try:
        config_a = {k: v for k, v in a["config"].items() if k != "rank"}
        config_b = {k: v for k, v in b["config"].items() if k != "rank"}
    except (KeyError, AttributeError, TypeError):
        return False
    keys = ("epoch", "batches_yielded", "step", "snapshot_fingerprint")
    return config_a == config_b and all(a.get(k) == b.get(k) for k in keys)


def as_lightning(loader: StreamingLoader) -> LightningLoader:
    """``loader`` for ``lightning.Trainer.fit(model, train_dataloaders=as_lightning(loader))``."""
    return LightningLoader(loader)
