"""Cost of score synchronisation across gloo ranks, and the bytes it moves per epoch.

    python benchmarks/dist_bench.py                      # 2 and 4 ranks, batch 256, N = 1.3M
    python benchmarks/dist_bench.py --world 2 --steps 100
    python benchmarks/dist_bench.py --help

Measured (real processes, gloo on 127.0.0.1, one torch thread per rank):

* ``sync every step``: per step, every rank hands ``DistributedScores.update`` a batch of
  256 random ids (int64) and float32 losses and calls ``sync()``: header all-gather,
  padded all-gathers of ids and losses, then every rank folds all ranks' reports into its
  copy of an N-sample score store. Ranks are aligned by a barrier before each timed
  step; the time is the slowest rank's (a DDP step waits for it). The worst case.
* ``default (sync_every=65536)``: the same steps with the library default, timed over
  the whole run (one sync per 256 steps at batch 256, plus the final sync an epoch end
  makes), per step.
* the reference step: forward + backward + SGD step of a small CNN (3 conv layers of
  32/64/128 channels, 3x3, max-pool, linear) on 256 CIFAR-sized 3x32x32 inputs, one
  thread, in one process on the same machine; and the same step run by every rank at
  once (barrier-aligned, slowest rank), which is what a step costs when the ranks
  share the cores, as the sync timings do.
* bytes per epoch, computed: each rank receives every visited sample's report once
  (8-byte id + 4-byte loss) per epoch, plus padding to the longest rank (at most one
  batch per rank per sync).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

REPORT_BYTES = 8 + 4


def machine() -> dict[str, Any]:
    from machineinfo import machine_info  # benchmarks/ is on sys.path when run as a script

    return machine_info(torch=torch.__version__)


class SmallCNN(nn.Module):
    """The reference step's model: three 3x3 conv + max-pool stages and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(128 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def reference_step_s(batch: int, steps: int) -> float:
    """Median seconds of one forward/backward/SGD step of :class:`SmallCNN` (one thread)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rank(rank: int, world: int, port: int, cfg: dict[str, Any], out: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    from shardprune.dist import DistributedScores

    n, batch, steps = cfg["num_samples"], cfg["batch"], cfg["steps"]
    rng = np.random.default_rng(rank)
    ids = [torch.from_numpy(rng.integers(0, n, batch)) for _ in range(steps)]
    losses = [torch.from_numpy(rng.random(batch, dtype=np.float32)) for _ in range(steps)]
    result: dict[str, Any] = {"contended_step_s": []}
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    for i in range(cfg["ref_steps"] + 1):
        dist.barrier()
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            result["contended_step_s"].append(time.perf_counter() - t0)
    for mode, sync_every in (("every_step", None), ("default", 65536)):
        scores = DistributedScores.open(
            Path(cfg["dir"]) / mode, n, "dist-bench", sync_every=sync_every, flush_interval_s=None
        )
        times = []
        dist.barrier()
        t_all = time.perf_counter()
        for i in range(steps):
            if mode == "every_step":
                dist.barrier()
                t0 = time.perf_counter()
                scores.update(ids[i], losses[i])
                scores.sync()
                times.append(time.perf_counter() - t0)
            else:
                scores.update(ids[i], losses[i])
        if mode == "default":
            scores.sync()  # the epoch-end exchange of what is still buffered
        dist.barrier()
        total = time.perf_counter() - t_all
        result[mode] = {
            "per_step_s": times if mode == "every_step" else total / steps,
            "stats": dict(scores.stats),
        }
        scores.close(sync=False)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run_world(world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(cfg, dir=tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_rank, args=(r, world, port, cfg, tmp)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode != 0 for p in procs):
            raise SystemExit(f"dist_bench: a rank failed with exit codes {[p.exitcode for p in procs]}")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    per_step = np.max(np.array([r["every_step"]["per_step_s"] for r in ranks]), axis=0)
    contended = np.max(np.array([r["contended_step_s"] for r in ranks]), axis=0)
    return {
        "world": world,
        "contended_step_s": float(np.median(contended)),
        "every_step_median_s": float(np.median(per_step)),
        "every_step_p90_s": float(np.percentile(per_step, 90)),
        "default_per_step_s": max(r["default"]["per_step_s"] for r in ranks),
        "default_syncs": ranks[0]["default"]["stats"]["syncs"],
        "bytes_received_per_rank_every_step": ranks[0]["every_step"]["stats"]["bytes_received"],
    }


def bytes_per_epoch(num_samples: int, world: int, kept_fraction: float) -> dict[str, float]:
    visited = num_samples * kept_fraction
    per_rank = visited * REPORT_BYTES
    return {"per_rank_MB": per_rank / 1e6, "all_ranks_MB": per_rank * world / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, nargs="+", default=[2, 4], help="rank counts (default 2 4)")
    p.add_argument("--batch", type=int, default=256, help="samples per rank per step (default 256)")
    p.add_argument("--steps", type=int, default=300, help="timed steps per mode (default 300)")
    p.add_argument("--num-samples", type=int, default=1_300_000, help="score store size N (default 1.3M)")
    p.add_argument("--ref-steps", type=int, default=10, help="steps timed for the reference CNN step")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    info = machine()
    print("machine:", json.dumps(info))
    ref = reference_step_s(args.batch, args.ref_steps)
    print(f"reference step (SmallCNN fwd+bwd+SGD, batch {args.batch}, 1 thread): {ref * 1e3:.1f} ms")
    cfg = {"num_samples": args.num_samples, "batch": args.batch, "steps": args.steps, "ref_steps": args.ref_steps}
    rows = []
    for world in args.world:
        r = run_world(world, cfg)
        r["every_step_fraction"] = r["every_step_median_s"] / ref
        r["default_fraction"] = r["default_per_step_s"] / ref
        contended = r["contended_step_s"]
        rows.append(r)
        print(
            f"world {world}: sync every step {r['every_step_median_s'] * 1e3:.2f} ms median "
            f"(p90 {r['every_step_p90_s'] * 1e3:.2f} ms) = {100 * r['every_step_fraction']:.2f}% of the step; "
            f"default sync_every=65536: {r['default_per_step_s'] * 1e3:.3f} ms/step "
            f"({r['default_syncs']} syncs in {args.steps} steps) = {100 * r['default_fraction']:.3f}% of the step"
        )
        print(
            f"world {world}: the step run by all {world} ranks at once: {contended * 1e3:.1f} ms; sync every step = "
            f"{100 * r['every_step_median_s'] / contended:.2f}%, default = "
            f"{100 * r['default_per_step_s'] / contended:.3f}% of it"
        )
    volumes = []
    for n in (1_300_000, 100_000_000):
        for world in args.world:
            for kept in (1.0, 0.65):
                b = bytes_per_epoch(n, world, kept)
                volumes.append({"num_samples": n, "world": world, "kept_fraction": kept, **b})
                print(
                    f"N={n:>11,} world {world} kept {kept:.2f}: {b['per_rank_MB']:9.1f} MB received per rank per "
                    f"epoch, {b['all_ranks_MB']:9.1f} MB over all ranks"
                )
    if args.json:
        doc = {"machine": info, "reference_step_s": ref, "sync": rows, "bytes": volumes}
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
