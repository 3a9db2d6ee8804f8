"""Plan the next epoch in a background thread while the current one drains.

Which reports the next epoch is planned from (the rule every run, and every resume,
follows, so it stays deterministic and exactly resumable):

1. Epoch ``e`` has ``n`` batches; let ``k = min(plan_ahead, max(1, n // 16))``
   (:func:`ahead_trigger`). When the training loop *requests batch* ``n - k`` of epoch
   ``e`` (and the loader will serve an epoch after it), the loader freezes the scores, on
   the training thread, before it hands that batch out. The snapshot of epoch ``e + 1``
   therefore holds every report made before that request: in the usual loop (request,
   forward, report, request ...) all batches of ``e`` but the last ``k``. Their samples
   keep the scores they had (as pruned samples do). Freezing stays on the training
   thread because a distributed store's snapshot is a collective, and every rank
   requests that batch at the same index (all ranks have equal batch counts).
   ``plan_ahead=0`` turns this off (the trigger is ``n``, which no request reaches): each
   epoch is frozen and planned when it starts. A consumer that requests batches on its own
   thread (a ``torchdata.nodes.Prefetcher``) needs it, because its requests run ahead of
   the reports by an amount that depends on timing.
2. The policy's decision, the plan and the first read units of ``e + 1`` are computed
   from that snapshot in one background thread, while the last ``k`` batches train; the
   worker pool then starts reading ``e + 1`` behind the last units of ``e``.
3. The next ``iter()`` (or ``set_epoch(e + 1)``) uses the prepared epoch. Any other epoch,
   or an epoch that was not served to its end, is planned when it starts, from the scores
   frozen then.
4. The loader's state records the prepared snapshot's fingerprint
   (``next_snapshot_fingerprint``); a resume from a state taken after the snapshot
   re-plans ``e + 1`` from that same snapshot (pinned in the store), not from the store's
   later scores. ``plan_ahead`` is part of the loader's configuration (checkpointed).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from shardprune.loader.epochs import PlannedEpoch
from shardprune.loader.ioplan import ReadPlan
from shardprune.scores.snapshot import ScoreSnapshot

#: What the background thread returns: the epoch and the read units of its first pass.
Prepared = tuple[PlannedEpoch, ReadPlan]
#: An epoch is frozen at most this fraction of its length before its end (rule 1).
MAX_AHEAD_FRACTION = 16
#: The loader's default ``plan_ahead`` (batches).
DEFAULT_PLAN_AHEAD = 64


def ahead_trigger(num_batches: int, plan_ahead: int) -> int:
    """The batch whose request freezes the scores for the next epoch (rule 1 of the module doc)."""
    return max(num_batches - min(plan_ahead, max(1, num_batches // MAX_AHEAD_FRACTION)), 0)


@dataclass
class _Job:
    epoch: int
    clock: int
    snapshot: ScoreSnapshot
    future: Future[Prepared]


class PlanAhead:
    """One background planning thread and at most one prepared epoch.

    Args:
        plan: ``fn(epoch, clock, snapshot) -> (PlannedEpoch, first pass's read units)``,
            a pure function (it runs on the background thread).
        on_ready: Called on the background thread with each prepared epoch (the loader
            opens the worker pool's next pass with it).
    """

    def __init__(
        self,
        plan: Callable[[int, int, ScoreSnapshot], Prepared],
        on_ready: Callable[[Prepared], None] | None = None,
    ) -> None:
        self._plan = plan
        self._on_ready = on_ready
        self._pool: ThreadPoolExecutor | None = None
        self._job: _Job | None = None

    def start(self, epoch: int, clock: int, snapshot: ScoreSnapshot) -> None:
        """Begin planning ``epoch`` at ``clock`` from ``snapshot`` (replacing any prepared epoch)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shardprune-plan")
        job = _Job(epoch, clock, snapshot, self._pool.submit(self._plan, epoch, clock, snapshot))
        self._job = job
        if self._on_ready is not None:
            job.future.add_done_callback(self._ready)

    def _ready(self, future: Future[Prepared]) -> None:
        if self._on_ready is not None and not future.cancelled() and future.exception() is None:
            if self._job is not None and self._job.future is future:  # still the epoch wanted
                self._on_ready(future.result())

    def snapshot_for(self, epoch: int) -> ScoreSnapshot | None:
        """The snapshot prepared for ``epoch``, if that is the epoch being prepared."""
        job = self._job
        return job.snapshot if job is not None and job.epoch == epoch else None

    def take(self, epoch: int, clock: int) -> Prepared | None:
        """The prepared ``epoch`` (waiting for the thread if needed), or None if another was prepared."""
        job, self._job = self._job, None
        if job is None or job.epoch != epoch or job.clock != clock:
            return None
        return job.future.result()

    def clear(self) -> None:
        """Forget the prepared epoch (its thread finishes and is ignored)."""
        self._job = None

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        self._job = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
