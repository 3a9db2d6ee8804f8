"""Hit rates of whole-shard eviction orders under pruned epochs (a model, no I/O).

    python benchmarks/cache_sim.py                  # 16 shards, r = 0.5, limits 25 / 50 / 75 %

Model: ``--shards`` equal shards of ``--per-shard`` samples; each epoch keeps an independent
uniform random ``1 - r`` of the samples and reads the shards in a new random order; a shard
is cached per sample (the kept samples it was read for), the cache holds at most
``limit x N`` samples, and a write that does not fit evicts whole shards (never the one being
written) in the policy's order: ``lru`` (least recently used first), ``mru`` (most recently
used first: what :mod:`shardprune.cache` does within one dataset) or ``none`` (never evict;
a write that does not fit is skipped). A hit is a kept sample found in the cache; the table
gives the share of kept samples that hit, per epoch after the first.
"""

from __future__ import annotations

import argparse

import numpy as np


def simulate(policy: str, *, shards: int, per_shard: int, limit: float, r: float, epochs: int,
             seed: int) -> list[float]:
    """The share of kept samples served from the cache in each epoch (epoch 0 first)."""
    rng = np.random.default_rng(seed)
    capacity = limit * shards * per_shard
    cached: list[set[int]] = [set() for _ in range(shards)]
    last_use = np.zeros(shards)
    clock = 0
    shares = []
    for _ in range(epochs):
        keep = rng.random(shards * per_shard) < 1 - r
        hits = kept = 0
        for s in rng.permutation(shards):
            clock += 1
            ids = [i for i in range(s * per_shard, (s + 1) * per_shard) if keep[i]]
            kept += len(ids)
            found = [i for i in ids if i in cached[s]]
            hits += len(found)
            if found:
                last_use[s] = clock
            missing = [i for i in ids if i not in cached[s]]
            used = sum(len(c) for c in cached)
            while used + len(missing) > capacity and policy != "none":
                others = [k for k in range(shards) if k != s and cached[k]]
                if not others:
                    break
                victim = min(others, key=lambda k: last_use[k]) if policy == "lru" else max(
                    others, key=lambda k: last_use[k])
                used -= len(cached[victim])
                cached[victim] = set()
            if used + len(missing) <= capacity:
                cached[s].update(missing)
                last_use[s] = clock
        shares.append(hits / max(1, kept))
    return shares


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--per-shard", type=int, default=200)
    p.add_argument("--ratio", type=float, default=0.5, help="prune ratio r (default 0.5)")
    p.add_argument("--limits", default="0.25,0.5,0.75", help="cache sizes as fractions of the dataset")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(f"{args.shards} shards x {args.per_shard} samples, r = {args.ratio}, {args.epochs} epochs, seed {args.seed}")
    print("| policy | limit | hits per epoch 1.. | mean |")
    print("|---|---|---|---|")
    for limit in (float(x) for x in args.limits.split(",")):
        for policy in ("lru", "mru", "none"):
            shares = simulate(policy, shards=args.shards, per_shard=args.per_shard, limit=limit, r=args.ratio,
                              epochs=args.epochs, seed=args.seed)[1:]
            print(f"| {policy} | {limit:.2f} | {' '.join(f'{x:.2f}' for x in shares)} | {np.mean(shares):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
