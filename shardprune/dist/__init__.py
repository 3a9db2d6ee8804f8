"""Distributed training: the world layout, score synchronisation across ranks, whole-job checkpoints.

:class:`World` says which rank of how many this process is. :class:`DistributedScores`
gives every rank the same scores (rank 0 writes the store; reports are all-gathered as
int64 ids and float32 losses). :func:`save_checkpoint` / :func:`load_checkpoint` save
and resume every rank's loader position with the scores and the policy.
"""

from shardprune.dist.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from shardprune.dist.collectives import GatheredReports, exchange_reports
from shardprune.dist.sync import DEFAULT_SYNC_EVERY, DistributedScores
from shardprune.dist.world import World

__all__ = [
    "DEFAULT_SYNC_EVERY",
    "DistributedScores",
    "GatheredReports",
    "World",
    "exchange_reports",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
