"""Plan the next epoch in a background thread while the current one drains.

Which reports the next epoch is planned from (the rule every run, and every resume,
follows, so it stays deterministic and exactly resumable):

1. When the training loop *requests the last batch* of epoch ``e`` (and the loader will
   serve an epoch after it), the loader freezes the scores, on the training thread, before
   it hands that batch out. The snapshot of epoch ``e + 1`` therefore holds every report
   made before that request: in the usual loop (request, forward, report, request ...)
   all batches of ``e`` but the last. Freezing stays on the training thread because a
   distributed store's snapshot is a collective, and every rank requests its last batch
   at the same batch index (all ranks have equal batch counts).
2. The policy's decision, the plan and the first read units of ``e + 1`` are computed
   from that snapshot in one background thread, while the last batch trains.
3. The next ``iter()`` (or ``set_epoch(e + 1)``) uses the prepared epoch. Any other epoch,
   or an epoch that was not served to its end, is planned when it starts, from the scores
   frozen then.
4. The loader's state records the prepared snapshot's fingerprint
   (``next_snapshot_fingerprint``); a resume from a state taken at the end of epoch ``e``
   re-plans ``e + 1`` from that same snapshot (pinned in the store), not from the store's
   later scores.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from shardprune.loader.epochs import PlannedEpoch
from shardprune.loader.ioplan import ReadUnit
from shardprune.scores.snapshot import ScoreSnapshot

#: What the background thread returns: the epoch and the read units of its first pass.
Prepared = tuple[PlannedEpoch, list[ReadUnit]]


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
    """

    def __init__(self, plan: Callable[[int, int, ScoreSnapshot], Prepared]) -> None:
        self._plan = plan
        self._pool: ThreadPoolExecutor | None = None
        self._job: _Job | None = None

    def start(self, epoch: int, clock: int, snapshot: ScoreSnapshot) -> None:
        """Begin planning ``epoch`` at ``clock`` from ``snapshot`` (replacing any prepared epoch)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="shardprune-plan")
        self._job = _Job(epoch, clock, snapshot, self._pool.submit(self._plan, epoch, clock, snapshot))

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
