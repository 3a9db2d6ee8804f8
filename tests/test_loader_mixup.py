"""In-flight Mixup (SwDPP): partners only among kept, non-pad samples of the batch; values, weights, targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from loader_data import CLASSES, SeenStore, as_float, write_dataset
from shardprune.dist.world import World
from shardprune.errors import ConfigError
from shardprune.loader import StreamingLoader
from shardprune.loader.mixup import mixup_draws
from shardprune.policies import make_policy

N = 150


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("mixup") / "ds"
    src = write_dataset(root, n=N, per_shard=30)
    return root, np.asarray(src.x)


def _loader(root: Path, prob: float, **kw: Any) -> StreamingLoader:
    args: dict[str, Any] = dict(
        batch_size=10, num_epochs=2, seed=3, store=SeenStore(n=N), shuffle_buffer=16, drop_last=False,
        policy=make_policy("swdpp", prune_ratio=0.5, mixup_prob=prob, mixup_alpha=0.7),
    )
    args.update(kw)
    return StreamingLoader(root, **args)


def test_partners_are_kept_samples_and_values_blend(ds: tuple[Path, np.ndarray]) -> None:
    root, x = ds
    mixed_total = eligible_total = pads = 0
    for rank in range(4):  # four ranks: some have a weight-0 pad slot
        with _loader(root, 0.6, world=World(rank, 4)) as loader:
            loader.set_epoch(0)
            plan, decision = loader.plan, loader.decision
            assert plan is not None and decision is not None
            kept = set(np.flatnonzero(decision.keep).tolist())
            for b, batch in enumerate(loader):
                slots = plan.batch_slots(b)
                ids = batch["ids"].numpy()
                assert np.array_equal(ids, plan.slot_ids[slots]) and set(ids.tolist()) <= kept
                pad = plan.slot_padded[slots]
                mixed = batch["mixed"].numpy()
                partner = batch["mix_partner"].numpy()
                lam = batch["mix_lambda"].numpy()
                assert not mixed[pad].any()
                assert np.all(partner[~mixed] == -1) and np.all(lam[~mixed] == 1)
                for a in np.flatnonzero(mixed):
                    p = partner[a]
                    assert 0 <= p < len(ids) and p != a and not pad[p]  # a kept, real sample of this batch
                    assert 0 < lam[a] <= 1
                    w = plan.slot_weights[slots]
                    # Blended from the partner's unblended row; column 0 of a row is its id.
                    want = lam[a] * x[ids[a]] + (1 - lam[a]) * x[ids[p]]
                    np.testing.assert_allclose(batch["npy"][a].numpy(), want, rtol=1e-5, atol=1e-5)
                    assert batch["weights"][a].item() == pytest.approx(lam[a] * w[a] + (1 - lam[a]) * w[p], rel=1e-6)
                    t = batch["target"][a].numpy()
                    y = batch["label"].numpy()
                    expect = np.zeros(CLASSES, np.float32)
                    expect[y[a]] += lam[a]
                    expect[y[p]] += 1 - lam[a]
                    np.testing.assert_allclose(t, expect, atol=1e-6)
                unmixed = ~mixed
                np.testing.assert_array_equal(batch["npy"][unmixed].numpy(), x[ids[unmixed]])
                assert torch.all(batch["target"].sum(1) - 1 < 1e-5)
                mixed_total += int(mixed.sum())
                eligible_total += int((~pad).sum())
                pads += int(pad.sum())
    assert pads == 2  # the pad rule was exercised
    # q = 0.6 at seed 3: the Philox draws are fixed, so the count is exact (46 / 78 = 0.59).
    assert (mixed_total, eligible_total) == (46, 78)


def test_mixup_same_with_workers_and_off_when_disabled(ds: tuple[Path, np.ndarray]) -> None:
    root, _ = ds
    keys = ("ids", "mixed", "mix_partner", "mix_lambda", "weights", "npy", "target")

    def run(**kw: Any) -> list[dict[str, np.ndarray]]:
        with _loader(root, 0.5, **kw) as loader:
            loader.set_epoch(1)
            return [{k: b[k].numpy() for k in keys if k in b} for b in loader]

    zero = run()
    two = run(num_workers=2, transform=as_float)
    assert len(zero) == len(two)
    for a, b in zip(zero, two):
        assert all(np.array_equal(a[k], b[k]) for k in keys)
    off = run(mixup=False)
    assert not any(b["mixed"].any() for b in off) and all("target" not in b for b in off)
    assert [b["ids"].tolist() for b in off] == [b["ids"].tolist() for b in zero]


def test_mixup_draws_rules() -> None:
    eligible = np.array([True, False, True, True, False, True])
    mixed, partner, lam = mixup_draws(eligible, seed=1, epoch=0, batch_index=0, prob=1.0, alpha=1.0)
    assert np.array_equal(mixed, eligible)  # q = 1: every eligible sample, no other
    assert all(partner[i] in (0, 2, 3, 5) and partner[i] != i for i in np.flatnonzero(mixed))
    one = np.array([False, True, False])
    assert not mixup_draws(one, seed=1, epoch=0, batch_index=0, prob=1.0, alpha=1.0)[0].any()  # nobody to mix with
    again = mixup_draws(eligible, seed=1, epoch=0, batch_index=0, prob=1.0, alpha=1.0)
    assert all(np.array_equal(u, v) for u, v in zip((mixed, partner, lam), again))
    other = mixup_draws(eligible, seed=1, epoch=0, batch_index=1, prob=1.0, alpha=1.0)
    assert not np.array_equal(lam, other[2])


def test_uint8_fields_need_a_transform(tmp_path: Path) -> None:
    from shardprune.format.writer import DatasetWriter
    from shardprune.sources.base import ArraySource

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (40, 4, 4, 3), dtype=np.uint8)
    DatasetWriter(tmp_path / "img", max_samples=10, keep_order=True).write(ArraySource(imgs, rng.integers(0, 2, 40), tar_encoding="png"))
    with _loader(tmp_path / "img", 1.0, store=SeenStore(n=40)) as loader:
        with pytest.raises(ConfigError, match=r"no floating-point field to blend .*'png': 'torch.uint8'"):
            next(iter(loader))
