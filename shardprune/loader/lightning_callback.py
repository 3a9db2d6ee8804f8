"""A Lightning callback that checkpoints the loader's position and the score store with the model.

Lightning restores callbacks before the fit loop fetches its first batch, which is the
only point early enough for :class:`~shardprune.loader.adapters.LightningLoader`: the
first batch of a resumed ``fit`` is fetched before Lightning calls ``set_epoch``, and
Lightning itself hands a loader its state back only for a checkpoint taken mid-epoch.
Importing this module needs ``lightning`` (``pip install lightning``).
"""

from __future__ import annotations

from typing import Any

from shardprune.errors import ConfigError
from shardprune.loader.adapters import LightningLoader
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


class PruningCheckpoint(Callback):
    """Save and restore the loader's position and the score store in Lightning checkpoints.

    Args:
        data: The :func:`~shardprune.loader.adapters.as_lightning` adapter passed to ``fit``.
        store: The score store the training step reports to (anything with
            ``state_dict()`` / ``load_state_dict()``: a ScoreStore or DistributedScores).

    State format: ``{"loader": data.state_dict(), "scores": store.state_dict()}``; the
    scores are restored first, because the loader re-plans its epoch from the snapshot
    pinned in the store.
    """

    def __init__(self, data: LightningLoader, store: ScoreSink) -> None:
        if not isinstance(data, LightningLoader):
            raise ConfigError(
                f"data={data!r} must be the as_lightning(loader) adapter that is passed to Trainer.fit"
            )
        for method in ("state_dict", "load_state_dict"):
            if not callable(getattr(store, method, None)):
                raise ConfigError(f"store={store!r} has no {method}(); pass the ScoreStore the training step reports to")
        self.data = data
        self.store: Any = store

    def state_dict(self) -> dict[str, Any]:
        """The loader's position (batches trained on) and the score store's state."""
        return {LOADER_KEY: self.data.state_dict(), SCORES_KEY: self.store.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scores, then the loader (its epoch is planned from the pinned scores)."""
        self.store.load_state_dict(state_dict[SCORES_KEY])
        self.data.load_state_dict(state_dict[LOADER_KEY])
