"""Put fetched samples back in plan order and cut them into batches.

Read units arrive in read order (sequential within each shard); the plan yields them in
the shuffled order ``plan.order``. :class:`PlanOrder` keeps the fetched samples by slot
and emits batch ``b`` as soon as every slot of ``plan.batch_slots(b)`` is present. The
plan's shuffle buffer guarantees a slot is read at most ``shuffle_buffer`` positions
before it is yielded, so the number of samples held is bounded by ``shuffle_buffer +
batch_size`` plus one read unit.

Because results are reordered by slot, the batches do not depend on how many workers
fetched the units, nor on the order in which the workers finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchdata.nodes import BaseNode

from shardprune.errors import ConfigError
from shardprune.loader.collate import Batch, collate
from shardprune.loader.decode import Sample
from shardprune.loader.fetch import UnitResult
from shardprune.loader.mixup import apply_mixup
from shardprune.loader.plan import EpochPlan

#: A batch before collation: its index in the epoch and its ``(slot, sample)`` pairs.
SampleBatch = tuple[int, list[tuple[int, Sample]]]


class PlanOrder(BaseNode[SampleBatch]):
    """torchdata node: :class:`UnitResult` stream in read order -> batches in plan order.

    Args:
        source: Node yielding the read units' results in unit order.
        plan: The epoch plan.
        start_batch: First batch to emit (a resume cursor); the source must serve
            exactly the slots of batches ``start_batch..plan.num_batches - 1``.
        on_result: Called with each :class:`UnitResult` as it arrives (I/O counters).

    State format: ``{"next_batch": int}``, the next batch index to emit. The loader
    rebuilds the read units from the plan for a resume, so this node can only be
    reset to the cursor it was built for.
    """

    NEXT_BATCH_KEY = "next_batch"

    def __init__(
        self,
        source: BaseNode[UnitResult],
        plan: EpochPlan,
        *,
        start_batch: int = 0,
        on_result: Callable[[UnitResult], None] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= start_batch <= plan.num_batches:
            raise ConfigError(f"start_batch={start_batch} is outside 0..{plan.num_batches}")
        self.source = source
        self.plan = plan
        self.start_batch = start_batch
        self.on_result = on_result
        self._next = start_batch
        self._held: dict[int, Sample] = {}

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is not None and initial_state[self.NEXT_BATCH_KEY] != self.start_batch:
            raise ConfigError(
                f"PlanOrder was built to start at batch {self.start_batch}, not "
                f"{initial_state[self.NEXT_BATCH_KEY]}; build a new pipeline for that cursor"
            )
        self.source.reset()
        self._next = self.start_batch
        self._held = {}

    def get_state(self) -> dict[str, Any]:
        return {self.NEXT_BATCH_KEY: self._next}

    def next(self) -> SampleBatch:
        b = self._next
        if b >= self.plan.num_batches:
            raise StopIteration
        slots = self.plan.batch_slots(b).tolist()
        held = self._held
        while any(s not in held for s in slots):
            try:
                result = next(self.source)
            except StopIteration:
                missing = [s for s in slots if s not in held]
                raise RuntimeError(
                    f"read units ended before batch {b} was complete (missing plan slots {missing[:8]}); "
                    "this is a bug in the I/O plan"
                ) from None
            if result.error is not None:
                raise result.error.rebuild()
            if self.on_result is not None:
                self.on_result(result)
            result.unpack()
            for slot, sample in result.samples:
                held[slot] = sample
        self._next = b + 1
        return b, [(s, held.pop(s)) for s in slots]


class BatchAssembler:
    """Collate a :data:`SampleBatch` and add ``weights``, ``epoch`` (int) and the Mixup fields.

    Args:
        plan: The epoch plan (weights and pad flags of each slot).
        seed: Philox key of the Mixup draws.
        mixup_prob: Probability that a kept, non-pad sample is blended (0: never).
        mixup_alpha: Beta parameter of the blend factor.
        num_classes: The dataset's classes (for the soft ``target``), or None.
        keep_label: Whether batches carry ``label`` (False for unlabelled data).
        fields: Fields every batch carries: one that no sample of a batch has arrives as a
            list of :data:`~shardprune.loader.collate.MISSING` (as in a batch where only
            some samples lack it), so ``batch[field]`` never raises ``KeyError``. Empty
            when a transform may rename fields.
    """

    def __init__(
        self,
        plan: EpochPlan,
        *,
        seed: int,
        mixup_prob: float,
        mixup_alpha: float,
        num_classes: int | None,
        keep_label: bool,
        fields: tuple[str, ...] = (),
    ) -> None:
        self.plan = plan
        self.fields = fields
        self.seed = seed
        self.mixup_prob = mixup_prob
        self.mixup_alpha = mixup_alpha
        self.num_classes = num_classes
        self.keep_label = keep_label

    def __call__(self, item: SampleBatch) -> Batch:
        b, pairs = item
        slots = np.fromiter((s for s, _ in pairs), dtype=np.int64, count=len(pairs))
        batch = collate([sample for _, sample in pairs], self.fields)
        if not self.keep_label:
            batch.pop("label", None)
        batch["weights"] = torch.from_numpy(self.plan.slot_weights[slots].astype(np.float32))
        # The score store records each report under the epoch of the batch it came from.
        batch["epoch"] = self.plan.epoch
        return apply_mixup(
            batch,
            eligible=~self.plan.slot_padded[slots],
            seed=self.seed,
            epoch=self.plan.epoch,
            batch_index=b,
            prob=self.mixup_prob,
            alpha=self.mixup_alpha,
            num_classes=self.num_classes,
        )
