"""The pure epoch part of the loader: (snapshot, policy, configuration) -> decision, plan, stats.

Nothing here starts a thread or a process, reads a byte or calls a collective. Given the
same arguments, :meth:`EpochPlanner.plan` returns the same :class:`PlannedEpoch` on every
machine (see :mod:`shardprune.loader.plan` for the plan's own rules).

The policy's clock:

* Epoch mode (``num_epochs``): the policy decides epoch ``e`` as
  ``decide(snapshot, e, seed, num_epochs)``. Epochs at or past ``num_epochs`` are valid:
  every policy anneals for ``e >= delta * num_epochs`` (delta <= 1), so they read all
  data with weight 1 instead of crashing a framework that runs one epoch too many.
* Step mode (``num_steps``): the policy decides an epoch that starts at global step
  ``s`` (batches yielded before it) as ``decide(snapshot, s, seed, num_steps)``, so
  annealing starts at step ``delta * num_steps`` (at the first epoch boundary after it)
  and the keep draws of each epoch differ (``s`` grows strictly from epoch to epoch).
  The shuffle and Mixup streams are still keyed by the epoch number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardprune.dataset import ShardedDataset
from shardprune.errors import ConfigError
from shardprune.loader.filter import decide_filtered
from shardprune.loader.ioplan import ReadPlan, plan_reads
from shardprune.loader.options import ReadOptions
from shardprune.loader.plan import EpochPlan, PlanConfig, make_plan
from shardprune.loader.stats import EpochStats
from shardprune.policies.decision import EpochDecision, Policy
from shardprune.scores.snapshot import ScoreSnapshot


@dataclass
class PlannedEpoch:
    """Everything decided for one epoch before any byte is read.

    Attributes:
        epoch: The epoch number (keys the shuffle and Mixup streams; batches carry it).
        clock: What the policy was given as its epoch: ``epoch`` in epoch mode, the
            global step at the epoch's start in step mode.
        snapshot: The frozen scores the decision was made from.
        decision: The policy's keep decision and weights (final: after any filter).
        plan: This rank's plan.
        stats: The epoch's counters (planned figures filled; I/O figures grow while iterating).
    """

    epoch: int
    clock: int
    snapshot: ScoreSnapshot
    decision: EpochDecision
    plan: EpochPlan
    stats: EpochStats


def full_batches(num_samples: int, cfg: PlanConfig) -> int:
    """Batches of an epoch that keeps every sample (the most any epoch yields), planned or not."""
    per_rank = num_samples // cfg.world_size
    if cfg.drop_last:
        return per_rank // cfg.batch_size
    ceil_rank = -(-num_samples // cfg.world_size)
    return -(-ceil_rank // cfg.batch_size)


class EpochPlanner:
    """Plan epochs of one dataset for one rank, as a pure function of its inputs.

    Args:
        dataset: The dataset (its manifest's shard, offset and length columns are read).
        policy: The pruning policy.
        cfg: The plan configuration (seed, rank layout, batch and shuffle settings).
        horizon: ``num_epochs`` in epoch mode, ``num_steps`` in step mode (the policy's
            schedule length; see the module docstring).
        filter_ids: Sample ids a filter keeps (:mod:`shardprune.loader.filter`); the policy
            decides over them only. None: every sample.
    """

    def __init__(
        self, dataset: ShardedDataset, policy: Policy, cfg: PlanConfig, horizon: int, filter_ids: np.ndarray | None = None
    ) -> None:
        self.dataset = dataset
        self.filter_ids = filter_ids
        self.policy = policy
        self.cfg = cfg
        self.horizon = horizon
        self._lengths = np.asarray(dataset.manifest.length, dtype=np.int64)

    def plan(self, epoch: int, clock: int, snapshot: ScoreSnapshot) -> PlannedEpoch:
        """Decide and plan ``epoch`` from ``snapshot`` with the policy at ``clock``."""
        n = len(self.dataset)
        decision = decide_filtered(self.policy, snapshot, self.filter_ids, clock, self.cfg.seed, self.horizon)
        if decision.keep.shape != (n,) or decision.weights.shape != (n,):
            raise ConfigError(
                f"policy {self.policy!r} returned keep/weights of shapes {decision.keep.shape}/"
                f"{decision.weights.shape}; the dataset has {n} samples"
            )
        m = self.dataset.manifest
        plan = make_plan(
            decision.keep, decision.weights, m.shard, m.offset, len(self.dataset.header.shards), self.cfg, epoch
        )
        keep = np.asarray(decision.keep, dtype=bool)
        stats = EpochStats(
            epoch=epoch,
            samples_total=n,
            samples_planned=plan.num_samples,
            samples_skipped=n - int(np.count_nonzero(keep)),
            trimmed=plan.trimmed,
            padded=plan.padded,
            bytes_kept=int(self._lengths[plan.slot_ids[plan.order]].sum()),
            bytes_not_read=int(self._lengths[~keep].sum()),
        )
        return PlannedEpoch(epoch, clock, snapshot, decision, plan, stats)

    def read_units(self, plan: EpochPlan, start_batch: int, reads: ReadOptions) -> ReadPlan:
        """The range reads serving batches ``start_batch..`` of ``plan``, in read order."""
        slots = np.sort(plan.order[start_batch * plan.batch_size :])
        m = self.dataset.manifest
        return plan_reads(
            slots,
            plan.slot_ids[slots],
            m.shard,
            m.offset,
            m.length,
            max_gap=reads.max_gap,
            max_block=reads.max_block,
            gap_budget=reads.gap_budget,
            cost=reads.cost,
        )
