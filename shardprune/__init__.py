"""shardprune: dynamic data pruning inside a streaming shard loader.

A pruned sample's bytes are never read, from local disk or from object storage.

The names that pull in torch (the loader, the training helper, the store) are imported
on first use, so ``tools/make_shards.py`` and ``open_dataset`` start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shardprune.dataset import ShardedDataset, open_dataset
from shardprune.storage import Storage, open_storage

if TYPE_CHECKING:
    from shardprune.dist import DistributedScores, load_checkpoint, save_checkpoint
    from shardprune.loader.streaming import StreamingLoader
    from shardprune.policies import POLICIES, make_policy
    from shardprune.scores.snapshot import ScoreSnapshot
    from shardprune.scores.store import ScoreStore
    from shardprune.train import weighted_loss

#: Lazily imported public names -> their modules.
_LAZY = {
    "DistributedScores": "shardprune.dist",
    "POLICIES": "shardprune.policies",
    "ScoreSnapshot": "shardprune.scores.snapshot",
    "ScoreStore": "shardprune.scores.store",
    "StreamingLoader": "shardprune.loader.streaming",
    "load_checkpoint": "shardprune.dist",
    "make_policy": "shardprune.policies",
    "save_checkpoint": "shardprune.dist",
    "weighted_loss": "shardprune.train",
}

__all__ = [
    "DistributedScores",
    "POLICIES",
    "ScoreSnapshot",
    "ScoreStore",
    "ShardedDataset",
    "Storage",
    "StreamingLoader",
    "load_checkpoint",
    "make_policy",
    "open_dataset",
    "open_storage",
    "save_checkpoint",
    "weighted_loss",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
