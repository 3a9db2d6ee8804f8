"""The streaming loader: plan -> range reads -> fetch/verify/decode -> plan order -> batches.

Modules, in data-path order: :mod:`~shardprune.loader.plan` (which slots, in which
order, on which rank), :mod:`~shardprune.loader.ioplan` (merging byte ranges into
reads), :mod:`~shardprune.loader.fetch` (where bytes are read), :mod:`~shardprune.loader.decode`,
:mod:`~shardprune.loader.order` (back to plan order), :mod:`~shardprune.loader.collate`,
:mod:`~shardprune.loader.mixup`, and :mod:`~shardprune.loader.streaming`, which runs them.
"""

from shardprune.loader.ioplan import IOSummary, ReadBlock, ReadPlan, ReadUnit, plan_reads, summarize
from shardprune.loader.plan import EpochPlan, PlanConfig, make_plan
from shardprune.loader.stats import EpochStats
from shardprune.loader.streaming import StreamingLoader

__all__ = [
    "EpochPlan",
    "EpochStats",
    "IOSummary",
    "PlanConfig",
    "ReadBlock",
    "ReadPlan",
    "ReadUnit",
    "StreamingLoader",
    "make_plan",
    "plan_reads",
    "summarize",
]
