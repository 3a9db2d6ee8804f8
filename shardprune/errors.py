"""Every error shardprune raises.

Each class subclasses the builtin a caller would already catch (``ValueError``,
``FileNotFoundError``, ...), so existing ``except`` clauses keep working. Messages
name the offending value, the allowed range and the fix.
"""

from __future__ import annotations


class ShardpruneError(Exception):
    """Base class of every shardprune error."""


class ConfigError(ShardpruneError, ValueError):
    """An argument or option is outside its allowed range."""


class DatasetError(ShardpruneError, ValueError):
    """A dataset directory, header or manifest is malformed or inconsistent."""


class DatasetNotFoundError(ShardpruneError, FileNotFoundError):
    """No shardprune dataset exists at the given location."""


class FormatVersionError(DatasetError):
    """A dataset was written by a format version this release cannot read."""


class CorruptSampleError(ShardpruneError, IOError):
    """A sample's bytes do not match its CRC32, or cannot be parsed.

    The message always names the shard, the sample id and the byte offset.
    """


class SourceError(ShardpruneError, ValueError):
    """Input given to a converter (``tools/make_shards.py``) is unusable."""


class OutputExistsError(ShardpruneError, FileExistsError):
    """The output location already holds a different dataset."""


class FetchError(ShardpruneError, IOError):
    """Reading a byte range failed after every retry."""


class ScoreStoreError(ShardpruneError, RuntimeError):
    """The score store cannot be opened, updated or flushed."""


class OwnershipLostError(ScoreStoreError):
    """Another process opened the score store as a writer; this one may no longer commit."""


class UnflushedScoresWarning(UserWarning):
    """A writer store was garbage-collected without ``close()``: its last reports are lost."""


class ScoreStoreMismatchError(ScoreStoreError, ValueError):
    """A score store belongs to another dataset (size or checksum differ)."""


class InvalidLossError(ShardpruneError, ValueError):
    """Losses or ids handed to the score store are NaN, infinite or out of range."""


class CheckpointMismatchError(ShardpruneError, ValueError):
    """A checkpoint was made under another configuration or score snapshot."""


class DistributedError(ShardpruneError, RuntimeError):
    """The world layout is invalid or ranks disagree."""
