"""shardprune: dynamic data pruning inside a streaming shard loader.

A pruned sample's bytes are never read, from local disk or from object storage.
"""

from shardprune.dataset import ShardedDataset, open_dataset
from shardprune.storage import Storage, open_storage

__all__ = [
    "ShardedDataset",
    "Storage",
    "open_dataset",
    "open_storage",
]
__version__ = "0.1.0"
