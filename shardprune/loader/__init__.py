"""The streaming loader: plan -> range reads -> fetch/verify/decode -> plan order -> batches.

Modules, in data-path order: :mod:`~shardprune.loader.plan` (which slots, in which
order, on which rank), :mod:`~shardprune.loader.ioplan` (merging byte ranges into
reads, with :mod:`~shardprune.loader.options`), :mod:`~shardprune.loader.fetch` (where
bytes are read), :mod:`~shardprune.loader.decode`, :mod:`~shardprune.loader.order` (back
to plan order), :mod:`~shardprune.loader.collate`, :mod:`~shardprune.loader.mixup`.
Around them: :mod:`~shardprune.loader.epochs` (the pure epoch part: snapshot + policy ->
decision, plan, stats), :mod:`~shardprune.loader.ahead` (the next epoch planned in the
background), :mod:`~shardprune.loader.workers` (persistent worker processes),
:mod:`~shardprune.loader.failure` (worker errors re-raised unchanged),
:mod:`~shardprune.loader.pipeline` (one pass's torchdata graph) and
:mod:`~shardprune.loader.streaming`, which drives them.
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
