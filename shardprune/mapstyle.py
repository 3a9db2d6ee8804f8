"""Pruning for a map-style ``torch.utils.data.Dataset`` you keep as it is (no conversion).

For users of InfoBatch's ``InfoBatch(dataset, num_epochs, prune_ratio)`` wrapper: the
same policies, weights, score store and ``weighted_loss`` as the streaming loader, over
any dataset with ``__len__`` and ``__getitem__``, with a ``DataLoader`` (workers
included). There is **no I/O saving** beyond not calling ``__getitem__`` for pruned
indices: the dataset reads its samples however it does, and nothing is planned from a
byte index. Convert to shards and use :class:`~shardprune.loader.StreamingLoader` to
stop reading pruned bytes.

How it fits together:

1. :class:`PrunedSampler` decides each epoch in the training process: it freezes the
   store's scores, asks the policy (:func:`~shardprune.loader.filter.decide_filtered`,
   so a ``filter`` mask works too), shuffles the kept ids with Philox keyed by the seed
   (counter ``(PURPOSE_MAPSTYLE, epoch)``) and yields ``(index, weight)`` pairs. The
   weight travels with the index, so worker processes never hold stale weights (the
   official InfoBatch sets weights on the dataset object, which forked workers copy).
2. :class:`PrunedDataset` turns a pair into ``{**sample, "ids": index, "weights":
   weight}`` for a dict sample, or ``{"sample": sample, "ids": ..., "weights": ...}``
   otherwise; the default collate makes ``ids`` and ``weights`` tensors, which is what
   :func:`~shardprune.train.weighted_loss` reads.
3. An iteration of the sampler that follows no :meth:`PrunedSampler.set_epoch` call
   moves to the next epoch by itself, so a plain ``for epoch ...: for batch in loader``
   loop gets a fresh, pruned epoch each time.

Determinism: an epoch's indices, order and weights are a pure function of the seed, the
epoch, the score snapshot, the policy and (rank, world_size). Ranks take contiguous
slices of the epoch's order, padded with weight-0 repeats to equal length. Resume is per
epoch: :meth:`PrunedSampler.state_dict` records the next epoch and the configuration,
and the score store is restored from its own checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, Protocol

import numpy as np
import torch.utils.data

from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.loader.filter import decide_filtered
from shardprune.policies import make_policy
from shardprune.policies.decision import EpochDecision, Policy
from shardprune.policies.rng import philox
from shardprune.scores.snapshot import ScoreSnapshot
from shardprune.validate import check_int

#: Philox purpose of the map-style epoch shuffle (distinct from the policies' 1..5, the
#: planner's 101.. and the converter's permutation, 201).
PURPOSE_MAPSTYLE = 301


class _Snapshots(Protocol):
    def snapshot(self) -> ScoreSnapshot: ...


class MapDataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class PrunedDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """A map-style dataset wrapped for dynamic pruning (no I/O saving: see the module doc).

    Args:
        dataset: Any map-style dataset (``__len__``, ``__getitem__``).
        num_epochs: Epochs of the run (>= 1); policies anneal relative to it.
        policy: A :class:`Policy` or a registered name (default ``"infobatch"``); None or
            ``"full"`` keeps everything.
        store: A :class:`~shardprune.ScoreStore` of ``len(dataset)`` samples (or anything
            with ``snapshot()``), or None for never-seen scores every epoch.
        seed: Philox key of the policy's draws and the shuffle (default 0).
        filter: Optional bool mask over indices: samples outside it are never yielded.

    ``pruned[(i, w)]`` returns sample ``i`` with weight ``w``; ``pruned[i]`` weight 1.
    """

    def __init__(
        self,
        dataset: MapDataset,
        num_epochs: int,
        *,
        policy: Policy | str | None = "infobatch",
        store: _Snapshots | None = None,
        seed: int = 0,
        filter: np.ndarray | None = None,
    ) -> None:
        if not isinstance(dataset, Sized) or not callable(getattr(dataset, "__getitem__", None)):
            raise ConfigError(
                f"dataset={type(dataset).__name__} has no __len__/__getitem__; PrunedDataset wraps map-style "
                "datasets (for shards use StreamingLoader)"
            )
        self.dataset = dataset
        self.num_samples = check_int("len(dataset)", len(dataset), 1, fix="the dataset is empty")
        self.num_epochs = check_int("num_epochs", num_epochs, 1)
        self.seed = check_int("seed", seed, 0)
        self.policy: Policy = make_policy(policy or "full") if policy is None or isinstance(policy, str) else policy
        if not callable(getattr(self.policy, "decide", None)):
            raise ConfigError(f"policy={policy!r} must be a Policy, a policy name or None")
        if store is not None and not callable(getattr(store, "snapshot", None)):
            raise ConfigError(f"store={store!r} has no snapshot() method; pass a ScoreStore or None")
        self.store = store
        self.filter_ids: np.ndarray | None = None
        if filter is not None:
            mask = np.asarray(filter)
            if mask.dtype != np.bool_ or mask.shape != (self.num_samples,):
                raise ConfigError(
                    f"filter has dtype {mask.dtype} and shape {mask.shape}; pass a bool mask of shape "
                    f"({self.num_samples},) or None"
                )
            self.filter_ids = np.flatnonzero(mask).astype(np.int64)
            if self.filter_ids.size == 0:
                raise ConfigError(f"filter keeps 0 of {self.num_samples} samples; loosen it")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, key: int | tuple[int, float]) -> dict[str, Any]:
        index, weight = key if isinstance(key, tuple) else (key, 1.0)
        sample = self.dataset[int(index)]
        out: dict[str, Any]
        if isinstance(sample, dict):
            clash = sorted({"ids", "weights"} & set(sample))
            if clash:
                raise ConfigError(
                    f"sample {index} already has key(s) {clash}; PrunedDataset adds 'ids' and 'weights', "
                    "rename them in your dataset"
                )
            out = dict(sample)
        else:
            out = {"sample": sample}
        out["ids"] = int(index)
        out["weights"] = float(weight)
        return out

    def decide(self, epoch: int) -> EpochDecision:
        """The policy's decision for ``epoch`` from the store's current scores."""
        check_int("epoch", epoch, 0, self.num_epochs - 1)
        set_store_epoch = getattr(self.store, "set_epoch", None)
        if callable(set_store_epoch):
            set_store_epoch(epoch)  # reports of this epoch's batches carry it
        snap = ScoreSnapshot.fresh(self.num_samples) if self.store is None else self.store.snapshot()
        if len(snap) != self.num_samples:
            raise ConfigError(f"store.snapshot() has {len(snap)} scores; the dataset has {self.num_samples} samples")
        return decide_filtered(self.policy, snap, self.filter_ids, epoch, self.seed, self.num_epochs)

    def sampler(self, *, rank: int = 0, world_size: int = 1) -> "PrunedSampler":
        """The :class:`PrunedSampler` to pass to ``DataLoader(pruned, sampler=...)``."""
        return PrunedSampler(self, rank=rank, world_size=world_size)


def epoch_order(keep: np.ndarray, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's indices of an epoch: the kept ids shuffled, cut into equal contiguous slices.

    The last slices are padded with the first ids of the order (to be given weight 0).
    Returns int64[per_rank].
    """
    kept = np.flatnonzero(keep).astype(np.int64)
    order = kept[philox(seed, PURPOSE_MAPSTYLE, epoch).permutation(kept.size)]
    per_rank = -(-order.size // world_size)
    padded = np.concatenate([order, order[: per_rank * world_size - order.size]])
    return padded[rank * per_rank : (rank + 1) * per_rank]


class PrunedSampler(torch.utils.data.Sampler[tuple[int, float]]):
    """Yields one epoch's kept ``(index, weight)`` pairs of a :class:`PrunedDataset`.

    Args:
        dataset: The pruned dataset.
        rank: This process's rank (default 0).
        world_size: Number of processes (default 1).

    Attributes:
        epoch: The epoch the next iteration yields.
        decision: The last epoch's decision (None before the first iteration).
    """

    def __init__(self, dataset: PrunedDataset, *, rank: int = 0, world_size: int = 1) -> None:
        self.dataset = dataset
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0, self.world_size - 1)
        self.epoch = 0
        self._epoch_set = False
        self._iterated = False
        self.decision: EpochDecision | None = None

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration yield ``epoch`` (0 <= epoch < num_epochs)."""
        self.epoch = check_int("epoch", epoch, 0, self.dataset.num_epochs - 1)
        self._epoch_set = True

    def __len__(self) -> int:
        if self.decision is None:
            return -(-self.dataset.num_samples // self.world_size)
        return -(-self.decision.num_kept // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        if self._iterated and not self._epoch_set:
            self.epoch = min(self.epoch + 1, self.dataset.num_epochs - 1)
        self._iterated, self._epoch_set = True, False
        decision = self.dataset.decide(self.epoch)
        self.decision = decision
        ids = epoch_order(decision.keep, self.dataset.seed, self.epoch, self.rank, self.world_size)
        pad_from = max(0, decision.num_kept - self.rank * ids.size)
        weights = decision.weights[ids].astype(np.float64)
        weights[pad_from:] = 0.0
        return iter([(int(i), float(w)) for i, w in zip(ids.tolist(), weights.tolist())])

    def state_dict(self) -> dict[str, Any]:
        """``{"version", "config", "next_epoch"}``: the epoch the next iteration yields (JSON-able)."""
        nxt = self.epoch if self._epoch_set or not self._iterated else self.epoch + 1
        return {"version": 1, "config": self._config(), "next_epoch": nxt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a :meth:`state_dict`: the next iteration yields its ``next_epoch``.

        Raises:
            CheckpointMismatchError: another version or configuration (both shown).
        """
        if not isinstance(state, dict) or set(state) != {"version", "config", "next_epoch"} or state["version"] != 1:
            raise CheckpointMismatchError(
                f"sampler state {state!r:.200} (in checkpoint) is not a version-1 PrunedSampler state (now)"
            )
        now = self._config()
        saved = state["config"]
        diffs = [f"{k}: {saved.get(k)!r} (in checkpoint) vs {now[k]!r} (now)" for k in now if saved.get(k) != now[k]]
        if diffs:
            raise CheckpointMismatchError(
                "the sampler checkpoint was made under another configuration: " + "; ".join(diffs)
            )
        self.set_epoch(min(int(state["next_epoch"]), self.dataset.num_epochs - 1))

    def _config(self) -> dict[str, Any]:
        d = self.dataset
        policy = d.policy.state_dict() if callable(getattr(d.policy, "state_dict", None)) else {}
        return {
            "num_samples": d.num_samples,
            "num_epochs": d.num_epochs,
            "seed": d.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "policy": policy,
            "filter_kept": None if d.filter_ids is None else int(d.filter_ids.size),
        }
