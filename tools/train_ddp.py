#!/usr/bin/env python
"""Train a small model with DDP on a shardprune dataset, pruning with one shared score state.

The template to copy for multi-node training. Every rank streams its own slice of each
epoch's plan (a pruned sample's bytes are never read), the ranks' per-sample losses
are all-gathered into one score state (:class:`shardprune.dist.DistributedScores`),
and the whole job checkpoints and resumes (:mod:`shardprune.dist.checkpoint`).

Examples::

    python tools/make_shards.py digits -o out/digits-train --format zarr
    python tools/make_shards.py digits -o out/digits-test --split test --format zarr
    torchrun --nproc-per-node 2 tools/train_ddp.py --data out/digits-train --test-data out/digits-test \\
        --model mlp --input-scale 0.0625 --scores out/run/scores --checkpoint out/run/ckpt.json
    # resume after a failure, with the same number of ranks
    torchrun --nproc-per-node 2 tools/train_ddp.py ... --resume
    # two nodes, data and scores on S3 (endpoint for S3-compatible stores)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host:29500 tools/train_ddp.py \\
        --data s3://bucket/train --scores s3://bucket/run/scores --checkpoint s3://bucket/run/ckpt.json

A checkpoint taken mid-epoch resumes only with the same number of ranks; one taken at the
end of an epoch (every epoch ends with one) resumes with any. Without torchrun it runs as a
single process. The per-rank ``--batch-size`` times the
number of ranks is the global batch; DDP averages the ranks' gradients, so 2 ranks of 32
follow the same schedule as 1 rank of 64. Errors print one line and exit 1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import sys
import time
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from shardprune.dataset import open_dataset
from shardprune.demo.data import load_arrays
from shardprune.demo.trainer import TrainConfig, accuracy, lr_at, per_sample_loss
from shardprune.dist import DistributedScores, World, load_checkpoint, save_checkpoint
from shardprune.errors import ShardpruneError
from shardprune.loader import StreamingLoader
from shardprune.models import MLP, MNIST1DCNN
from shardprune.policies import POLICIES, make_policy
from shardprune.storage import Storage
from shardprune.train import weighted_loss


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="train_ddp.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="training dataset directory or s3://bucket/prefix")
    p.add_argument("--test-data", help="evaluation dataset (read whole into memory on rank 0 at the end)")
    p.add_argument("--scores", required=True, help="score store location shared by all ranks (path or s3://)")
    p.add_argument("--checkpoint", help="checkpoint file (path or s3://.../ckpt.json); model weights go beside it")
    p.add_argument("--resume", action="store_true", help="resume from --checkpoint (mid-epoch: same rank count)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (default: 0)")
    p.add_argument(
        "--stop-after", type=int, default=0, help="checkpoint and stop after N steps of this invocation (a time slice)"
    )
    p.add_argument("--model", choices=("mlp", "cnn1d"), default="mlp", help="mlp (any shape) or cnn1d (MNIST-1D)")
    p.add_argument("--input-scale", type=float, default=1.0, help="inputs are multiplied by this (digits: 0.0625)")
    p.add_argument("--field", help="input field name (default: the dataset's only non-label field)")
    p.add_argument("--policy", choices=POLICIES, default="infobatch", help="pruning policy (default infobatch)")
    p.add_argument("--prune-ratio", type=float, default=0.5, help="the policy's r (default 0.5)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch per rank (default 32)")
    p.add_argument("--lr", type=float, default=1e-2, help="peak Adam learning rate (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="model init and loader seed (default 0)")
    p.add_argument("--num-workers", type=int, default=0, help="loader fetch processes per rank (default 0)")
    p.add_argument("--sync-every", type=int, default=65536, help="samples per rank between score syncs")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto", help="auto: nccl with CUDA")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint for s3:// URLs (e.g. http://127.0.0.1:9000)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank (default 1)")
    p.add_argument("--metrics-out", help="rank 0 writes a JSON summary here")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "threads", "sync_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if args.checkpoint_every < 0 or args.stop_after < 0:
        p.error(f"--checkpoint-every {args.checkpoint_every} and --stop-after {args.stop_after} must be >= 0")
    if args.stop_after and not args.checkpoint:
        p.error("--stop-after needs --checkpoint to resume from")
    if args.resume and not args.checkpoint:
        p.error("--resume needs --checkpoint")
    return args


def init_distributed(backend: str) -> torch.device:
    """Join torchrun's process group (env://), or form a group of one without torchrun."""
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    cuda = torch.cuda.is_available()
    chosen = ("nccl" if cuda else "gloo") if backend == "auto" else backend
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if chosen == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(chosen, init_method="env://", timeout=timedelta(minutes=10))
    return device


def make_model(kind: str, in_shape: list[int], num_classes: int, input_scale: float) -> nn.Module:
    features = 1
    for s in in_shape:
        features *= int(s)
    if kind == "cnn1d":
        return MNIST1DCNN(features, num_classes)
    return MLP(features, num_classes, input_scale=input_scale)


def _weights_name(
    checkpoint: str, epoch: int, step: int, options: dict[str, Any] | None
) -> tuple[Storage, str]:
    """Where rank 0 saves model and optimiser weights: beside the checkpoint, named by position."""
    parent, _, name = checkpoint.rstrip("/").rpartition("/")
    stem = name.rsplit(".", 1)[0]
    return Storage(parent or ".", options), f"{stem}-model-{epoch:04d}-{step:06d}.pt"


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    options = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    device = init_distributed(args.backend)
    world = World.detect()
    scores: DistributedScores | None = None
    loader: StreamingLoader | None = None
    try:
        ds = open_dataset(args.data, options)
        field = args.field or next((f for f in ds.header.fields if f not in ("cls", "label")), None)
        if field is None or field not in ds.header.fields:
            raise ShardpruneError(f"--field {field!r} is not one of the dataset's fields {sorted(ds.header.fields)}")
        num_classes = ds.header.num_classes or int(ds.labels.max()) + 1
        scores = DistributedScores.open(
            args.scores,
            len(ds),
            ds.fingerprint,
            sync_every=args.sync_every,
            storage_options=options,
            flush_interval_s=None,
        )
        ratio = {} if args.policy == "full" else {"prune_ratio": args.prune_ratio}
        policy = make_policy(args.policy, **ratio)
        loader = StreamingLoader(
            ds,
            batch_size=args.batch_size,
            policy=policy,
            store=scores,
            num_epochs=args.epochs,
            seed=args.seed,
            world=world,
            num_workers=args.num_workers,
            drop_last=False,
        )
        torch.manual_seed(args.seed)
        shape = list(ds.header.fields[field].get("shape", [1]))
        model = make_model(args.model, shape, int(num_classes), args.input_scale).to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        opt = torch.optim.Adam(ddp.parameters(), lr=args.lr)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        first_epoch, resumed = 0, False
        previous_weights = ""
        if args.resume:
            extra = load_checkpoint(args.checkpoint, loader, scores, storage_options=options)
            storage = _weights_name(args.checkpoint, 0, 0, options)[0]
            blob = storage.read_bytes(extra["weights"])
            state = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            first_epoch, previous_weights = int(extra["epoch"]), str(extra["weights"])
            # An epoch-end checkpoint resumes at the next epoch, which must be planned afresh.
            resumed = loader.plan is not None and loader.plan.epoch == first_epoch
        history: list[dict[str, Any]] = []
        steps_done = 0
        stopped = False

        def checkpoint(epoch: int, step: int, next_epoch: int) -> None:
            nonlocal previous_weights
            if not args.checkpoint:
                return
            storage, name = _weights_name(args.checkpoint, epoch, step, options)
            if world.is_main:
                buf = io.BytesIO()
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
                storage.write_bytes_atomic(name, buf.getvalue())
            save_checkpoint(
                args.checkpoint, loader, scores, extra={"epoch": next_epoch, "weights": name}, storage_options=options
            )
            if world.is_main and previous_weights and previous_weights != name:
                storage.remove(previous_weights)
            previous_weights = name

        for epoch in range(first_epoch, args.epochs):
            t0 = time.perf_counter()
            if not resumed:
                loader.set_epoch(epoch)
            resumed = False
            scores.set_epoch(epoch)
            steps = max(len(loader), 1)
            start = loader.state_dict()["batches_yielded"]
            local = torch.zeros(2, dtype=torch.float64, device=device)  # samples, loss sum
            for step, batch in enumerate(loader, start=start):
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, epoch + step / steps)
                batch = {k: v.to(device, non_blocking=True) if k in (field, "label") else v for k, v in batch.items()}
                logits = ddp(batch[field])
                losses = per_sample_loss(logits, batch)
                loss = weighted_loss(batch, losses, scores)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                local += torch.stack([torch.tensor(float(losses.shape[0])), losses.detach().sum().double().cpu()]).to(
                    device
                )
                steps_done += 1
                if args.stop_after and steps_done == args.stop_after:
                    checkpoint(epoch, step + 1, epoch if step + 1 < steps else epoch + 1)
                    stopped = True
                    break
                if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < steps:
                    checkpoint(epoch, step + 1, epoch)
            if stopped:
                break
            dist.all_reduce(local)
            kept = loader.decision.num_kept if loader.decision is not None else len(ds)
            record = {
                "epoch": epoch,
                "kept_fraction": kept / len(ds),
                "visits": int(local[0]),
                "train_loss": float(local[1] / max(float(local[0]), 1.0)),
                "wall_s": time.perf_counter() - t0,
            }
            history.append(record)
            if world.is_main:
                print(json.dumps(record), flush=True)
            checkpoint(epoch, steps, epoch + 1)
        final = scores.snapshot(pin=False)
        summary: dict[str, Any] = {
            "stopped_after": steps_done if stopped else None,
            "world_size": world.world_size,
            "global_batch": args.batch_size * world.world_size,
            "epochs": history,
            "scores_fingerprint": final.fingerprint,
            "sync": dict(scores.stats),
        }
        if args.test_data and world.is_main:
            test = open_dataset(args.test_data, options)
            x, y = load_arrays(test, field)
            summary["test_acc"] = accuracy(model.cpu(), x, y)
        scores.close()
        loader.close()
        if world.is_main and stopped:
            print(f"stopped after {steps_done} steps; continue with --resume", flush=True)
        if world.is_main and "test_acc" in summary:
            print(f"test accuracy {summary['test_acc']:.4f}", flush=True)
        if world.is_main and args.metrics_out:
            Storage(os.path.dirname(os.path.abspath(args.metrics_out))).write_bytes_atomic(
                os.path.basename(args.metrics_out), json.dumps(summary, indent=1).encode()
            )
        return summary
    except BaseException:
        # No collective on the error path: a peer may be dead, and a sync would wait for it.
        if scores is not None:
            scores.close(sync=False)
        if loader is not None:
            loader.close()
        raise
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (ShardpruneError, FileNotFoundError) as exc:
        print(f"train_ddp.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
