"""A fixed-mask policy and the random masks the I/O benchmarks read with (io_bench, s3_bench)."""

from __future__ import annotations

import numpy as np

from shardprune.policies.decision import EpochDecision, PolicyBase
from shardprune.scores.snapshot import ScoreSnapshot


class MaskPolicy(PolicyBase):
    """Keep a fixed mask every epoch, weight N / kept."""

    name = "mask"

    def __init__(self, keep: np.ndarray) -> None:
        super().__init__(kept=int(keep.sum()), n=int(keep.size))
        self.keep = keep

    def decide(self, snapshot: ScoreSnapshot, epoch: int, seed: int, num_epochs: int) -> EpochDecision:
        w = np.full(self.keep.size, self.keep.size / max(int(self.keep.sum()), 1), dtype=np.float32)
        return EpochDecision(keep=self.keep.copy(), weights=w, keep_prob=None)


def keep_mask(n: int, ratio: float, seed: int = 0) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    keep[np.random.default_rng([seed, int(ratio * 1000)]).permutation(n)[: int(round((1 - ratio) * n))]] = True
    return keep
