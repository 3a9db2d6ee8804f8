"""A Lightning callback that checkpoints the loader's position and the score store with the model.

Lightning restores callbacks before the fit loop fetches its first batch, which is the
only point early enough for :class:`~shardprune.loader.adapters.LightningLoader`: the
first batch of a resumed ``fit`` is fetched before Lightning calls ``set_epoch``, and
Lightning itself hands a loader its state back only for a checkpoint taken mid-epoch.
Importing this module needs ``lightning`` (``pip install lightning``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from shardprune.dist.world import process_group_layout
from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.loader.adapters import LightningLoader
from shardprune.state import jsonable
from shardprune.train import ScoreSink

try:
    from lightning.pytorch import Callback
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "shardprune.loader.lightning_callback needs the lightning package: pip install lightning "
        "(it installs beside a CPU torch as long as torchvision is absent)"
    ) from exc

__all__ = ["PruningCheckpoint"]

#: Keys of :meth:`PruningCheckpoint.state_dict`.
LOADER_KEY = "loader"
SCORES_KEY = "scores"
#: Every rank's loader state, in rank order (``torch.distributed`` with more than one rank).
LOADERS_KEY = "loaders"


class PruningCheckpoint(Callback):
    """Save and restore the loader's position and the score store in Lightning checkpoints.

    Args:
        data: The :func:`~shardprune.loader.adapters.as_lightning` adapter passed to ``fit``,
            or a function of no arguments returning it.
        store: The score store the training step reports to (anything with
            ``state_dict()`` / ``load_state_dict()``: a ScoreStore or DistributedScores),
            or a function of no arguments returning it.

    Under DDP the loader and a :class:`~shardprune.dist.DistributedScores` store can only be
    made once the process group exists, in ``LightningModule.setup()``: pass functions,
    ``PruningCheckpoint(lambda: module.data, lambda: module.store)``. They are called when a
    checkpoint is saved or restored; Lightning calls ``setup()`` before either.

    State format: ``{"loader": data.state_dict(), "scores": store.state_dict()}``, and under
    ``torch.distributed`` with more than one rank ``"loaders"``: every rank's
    ``data.state_dict()`` in rank order (gathered when the checkpoint is taken, because
    Lightning writes rank 0's callback state only, and each rank's position is its own
    slice of the epoch). On restore each rank takes its own entry; a checkpoint written by
    another number of ranks is refused with CheckpointMismatchError. The scores are restored
    first, because the loader re-plans its epoch from the snapshot pinned in the store.
    Lightning calls both on every rank; the score store's ``state_dict`` and the gather
    are collective.
    """

    def __init__(self, data: LightningLoader | Callable[[], LightningLoader],
                 store: ScoreSink | Callable[[], ScoreSink]) -> None:
        if not isinstance(data, LightningLoader) and not callable(data):
            raise ConfigError(
                f"data={data!r} must be the as_lightning(loader) adapter that is passed to Trainer.fit, or a "
                "function returning it"
            )
        if not _is_store(store) and not callable(store):
            raise ConfigError(
                f"store={store!r} has no state_dict() / load_state_dict(); pass the ScoreStore (or "
                "DistributedScores) the training step reports to, or a function returning it"
            )
        self._data, self._store = data, store

    @property
    def data(self) -> LightningLoader:
        """The adapter (the function given instead is called now)."""
        data = self._data if isinstance(self._data, LightningLoader) else self._data()
        if not isinstance(data, LightningLoader):
            raise ConfigError(f"the data function returned {data!r}, not the as_lightning(loader) adapter")
        return data

    @property
    def store(self) -> Any:
        """The score store (the function given instead is called now)."""
        store = self._store if _is_store(self._store) else self._store()  # type: ignore[operator]
        if not _is_store(store):
            raise ConfigError(f"the store function returned {store!r}, which has no state_dict() / load_state_dict()")
        return store

    def state_dict(self) -> dict[str, Any]:
        """The loader's position (batches trained on; every rank's under DDP) and the score store's state."""
        loader = self.data.state_dict()
        state = {LOADER_KEY: loader, SCORES_KEY: self.store.state_dict()}
        _, world = process_group_layout() or (0, 1)
        if world > 1:
            from shardprune.dist.collectives import all_gather_bytes

            parts = all_gather_bytes(json.dumps(jsonable(loader)).encode())
            state[LOADERS_KEY] = [json.loads(p) for p in parts]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scores, then this rank's loader position (planned from the pinned scores)."""
        rank, world = process_group_layout() or (0, 1)
        loaders = state_dict.get(LOADERS_KEY)
        written_by = len(loaders) if loaders is not None else 1
        if written_by != world:
            raise CheckpointMismatchError(
                f"this checkpoint holds the loader positions of {written_by} rank(s), and this run has {world}: "
                "each rank's position is its own share of the epoch, so resume under the same number of ranks "
                f"(devices x nodes = {written_by})"
            )
        self.store.load_state_dict(state_dict[SCORES_KEY])
        self.data.load_state_dict(state_dict[LOADER_KEY] if loaders is None else loaders[rank])


def _is_store(obj: Any) -> bool:
    return all(callable(getattr(obj, m, None)) for m in ("state_dict", "load_state_dict"))
