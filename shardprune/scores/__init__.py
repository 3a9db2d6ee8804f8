"""Per-sample training scores: the store that collects them and the snapshots policies read."""

from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.scores.store import ScoreStore

__all__ = ["ScoreSnapshot", "ScoreStore"]
