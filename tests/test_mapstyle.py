"""PrunedDataset + PrunedSampler: pruning for a map-style Dataset kept as it is, with real workers.

Seen failing on ac615b0: there was no drop-in for a map-style dataset (no module
shardprune.mapstyle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from shardprune.errors import CheckpointMismatchError, ConfigError
from shardprune.mapstyle import PrunedDataset, epoch_order
from shardprune.scores.store import ScoreStore
from shardprune.train import weighted_loss


class Digits(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """The user's own map-style dataset (module level: workers unpickle it)."""

    def __init__(self, n: int = 400) -> None:
        x, y = load_digits(return_X_y=True)
        self.x = torch.tensor(x[:n], dtype=torch.float32) / 16.0
        self.y = [int(v) for v in y[:n]]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], self.y[i]


def _train(tmp: Path, epochs: int, workers: int) -> tuple[list[list[int]], list[int]]:
    torch.manual_seed(0)
    data = Digits()
    store = ScoreStore(str(tmp / "scores"), len(data), "digits-400", flush_interval_s=None)
    pruned = PrunedDataset(data, epochs, policy="infobatch", store=store, seed=1)
    sampler = pruned.sampler()
    loader = DataLoader(pruned, batch_size=50, sampler=sampler, num_workers=workers)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen: list[list[int]] = []
    kept: list[int] = []
    for _ in range(epochs):  # no set_epoch: the sampler moves to the next epoch by itself
        ids: list[int] = []
        for batch in loader:
            x, y = batch["sample"]
            losses = F.cross_entropy(model(x), y, reduction="none")
            loss = weighted_loss(batch, losses, store)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ids.extend(batch["ids"].tolist())
            assert batch["weights"].shape == (len(batch["ids"]),)
            assert sampler.decision is not None
            expected = sampler.decision.weights[batch["ids"].numpy()]
            assert np.allclose(batch["weights"].numpy(), expected)
        store.flush()
        seen.append(ids)
        assert sampler.decision is not None
        kept.append(sampler.decision.num_kept)
    store.close()
    return seen, kept


def test_infobatch_over_a_map_dataset_with_worker_processes(tmp_path: Path) -> None:
    seen, kept = _train(tmp_path / "a", epochs=4, workers=2)
    assert kept[0] == 400 and sorted(seen[0]) == list(range(400))
    # Every later epoch prunes well-learned samples (annealing starts at 0.875 * 4 = 3.5).
    assert all(250 <= k < 400 for k in kept[1:])
    for ids, k in zip(seen, kept):
        assert len(ids) == k and len(set(ids)) == k
    again, _ = _train(tmp_path / "b", epochs=4, workers=0)
    assert again == seen  # same seed: same indices in the same order, with or without workers


def test_ranks_are_disjoint_cover_the_kept_set_and_pads_weigh_zero() -> None:
    keep = np.zeros(23, dtype=bool)
    keep[[1, 2, 3, 5, 8, 13, 21]] = True
    parts = [epoch_order(keep, 4, 2, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    flat = np.concatenate(parts).tolist()
    assert sorted(flat[:7]) == [1, 2, 3, 5, 8, 13, 21] and flat[7:] == flat[:2]
    data = Digits(30)
    pruned = PrunedDataset(data, 2, policy="random", seed=3, filter=np.arange(30) < 23)
    weights = {r: [w for _, w in pruned.sampler(rank=r, world_size=4)] for r in range(4)}
    assert [len(w) for w in weights.values()] == [6, 6, 6, 6]
    assert weights[3][-1] == 0.0 and sum(w == 0.0 for ws in weights.values() for w in ws) == 1


def test_dict_samples_are_merged_and_clashing_keys_refused() -> None:
    class Dicts(torch.utils.data.Dataset[dict[str, Any]]):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": i * 2} if i < 2 else {"ids": 0}

    pruned = PrunedDataset(Dicts(), 1, policy=None)
    assert pruned[(1, 0.5)] == {"x": 2, "ids": 1, "weights": 0.5}
    with pytest.raises(ConfigError, match=r"sample 2 already has key\(s\) \['ids'\]"):
        pruned[2]


def test_bad_arguments_name_value_and_fix() -> None:
    with pytest.raises(ConfigError, match=r"num_epochs=0 must be an int >= 1"):
        PrunedDataset(Digits(10), 0)
    with pytest.raises(ConfigError, match=r"filter has dtype int64 and shape \(2,\)"):
        PrunedDataset(Digits(10), 1, filter=np.array([1, 0]))
    with pytest.raises(ConfigError, match="has no __len__/__getitem__"):
        PrunedDataset(iter([1, 2]), 1)  # type: ignore[arg-type]


def test_sampler_resumes_at_the_next_epoch_and_refuses_another_configuration() -> None:
    data = Digits(50)
    first = PrunedDataset(data, 5, policy="random", seed=2).sampler()
    list(first)
    list(first)  # epochs 0 and 1
    state = first.state_dict()
    assert state["next_epoch"] == 2
    epoch2 = list(first)
    second = PrunedDataset(data, 5, policy="random", seed=2).sampler()
    second.load_state_dict(state)
    assert list(second) == epoch2 and second.epoch == 2
    other = PrunedDataset(data, 5, policy="random", seed=3).sampler()
    with pytest.raises(CheckpointMismatchError, match=r"seed: 2 \(in checkpoint\) vs 3 \(now\)"):
        other.load_state_dict(state)
