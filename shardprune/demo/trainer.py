"""Train one model with one pruning policy through the streaming loader, and measure it.

Every policy of a comparison gets the same model initialisation (``torch.manual_seed(seed)``),
optimiser, batch size, epoch count and learning-rate schedule; only the loader's keep decision
differs. The schedule is a function of fractional epoch progress, so a pruned epoch with fewer
steps still sweeps the same learning rates as a full one.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shardprune.demo.data import DemoData
from shardprune.errors import ConfigError
from shardprune.models import make_model
from shardprune.policies.decision import DEFAULT_PRUNE_RATIO
from shardprune.train import DEFAULT_WEIGHT_MODE, WEIGHT_MODES
from shardprune.validate import check_choice

#: Policies the demo runs by default, and every policy the benchmark knows.
DEMO_POLICIES = ("full", "random", "infobatch", "swdpp")
ALL_POLICIES = ("full", "random", "epsilon_greedy", "ucb", "infobatch", "swdpp")
#: Per-dataset training defaults, chosen on a validation split carved from the train split
#: (the last 10% of train; ``benchmarks/train_bench.py --calibrate``), never on test.
#: ``lr`` is Adam's peak learning rate, ``sgd_lr`` that of SGD with momentum 0.9, each tuned
#: once for full training.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist1d": {"epochs": 30, "batch_size": 64, "lr": 3e-2, "sgd_lr": 0.1, "ema_beta": 0.9},
    "digits": {"epochs": 30, "batch_size": 32, "lr": 1e-2, "sgd_lr": 0.2, "ema_beta": 0.9},
}
#: Optimisers the trainer builds; SGD uses momentum :data:`SGD_MOMENTUM`.
OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9
#: Policies whose per-epoch keep probabilities are worth a histogram.
HISTOGRAM_POLICIES = ("infobatch", "swdpp")


@dataclass(frozen=True)
class TrainConfig:
    """What every policy of one comparison shares.

    Attributes:
        epochs: Training epochs (default 30).
        batch_size: Samples per batch (default 32).
        lr: Peak learning rate of the optimiser (default 2e-2).
        weight_decay: Weight decay (default 0).
        warmup_epochs: Linear warm-up before the cosine decay, in epochs (default 1).
        prune_ratio: The policies' ``r`` (ignored by ``full``; default 0.5).
        seed: Model initialisation and loader seed (default 0).
        num_workers: Loader worker processes (default 0: read in the training process).
        histogram_epoch: Epoch whose keep probabilities and scores are recorded
            (default None: the middle epoch).
        ema_beta: The score store's EMA momentum per visit, behind the loss-EMA scores of
            SwDPP, epsilon-greedy and UCB (InfoBatch uses the latest loss). Default 0.9.
        policy_params: Extra parameters for the pruning policy (not ``full``), as
            ``(name, value)`` pairs, e.g. ``(("mixup_prob", 0.0),)``; checked by
            ``shardprune.policies.make_policy``. Default none.
        optimizer: ``"adam"`` (default) or ``"sgd"`` (momentum 0.9); ``lr`` is its peak rate.
        weighting: How ``weighted_loss`` applies the pruning weights, one of
            ``shardprune.train.WEIGHT_MODES`` (default ``"normalized"``).
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-2
    weight_decay: float = 0.0
    warmup_epochs: float = 1.0
    prune_ratio: float = DEFAULT_PRUNE_RATIO
    seed: int = 0
    num_workers: int = 0
    histogram_epoch: int | None = None
    ema_beta: float = 0.9
    policy_params: tuple[tuple[str, float | None], ...] = ()
    optimizer: str = "adam"
    weighting: str = DEFAULT_WEIGHT_MODE

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first option outside its range."""
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ConfigError(f"prune_ratio={self.prune_ratio} must be in [0, 1), e.g. 0.5")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr} must be a finite number > 0, e.g. 0.01")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs}]")
        if self.seed < 0:
            raise ConfigError(f"seed={self.seed} must be >= 0")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ConfigError(f"ema_beta={self.ema_beta} must be in [0, 1)")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers} must be >= 0 (0 reads in the training process)")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("weighting", self.weighting, WEIGHT_MODES)

    @property
    def hist_epoch(self) -> int:
        return self.epochs // 2 if self.histogram_epoch is None else min(self.histogram_epoch, self.epochs - 1)


@dataclass
class EpochRecord:
    """One epoch of one run. Byte counts are the loader's; ``wall_s`` and ``cpu_s`` exclude evaluation.

    ``cpu_s`` is the training process's CPU time (all its threads; loader worker processes
    not included) over the epoch: on a shared machine it moves far less than wall time when
    other processes compete for the cores.
    """

    epoch: int
    visits: int
    bytes_read: int
    bytes_not_read: int
    wall_s: float
    train_loss: float
    test_acc: float
    cpu_s: float = float("nan")


@dataclass
class RunResult:
    """One (dataset, policy, prune ratio, seed) training run.

    Attributes:
        visits: Samples the loader yielded, summed over epochs.
        bytes_read / bytes_not_read: Sample bytes fetched / skipped by the plan, summed.
        wall_s: Training time (loader + forward/backward), evaluation excluded.
        cpu_s: CPU time of the training process over the same spans.
        histogram: ``{"epoch", "keep_prob", "score"}`` of :attr:`TrainConfig.hist_epoch`
            for policies in :data:`HISTOGRAM_POLICIES`, else None.
    """

    dataset: str
    policy: str
    prune_ratio: float
    seed: int
    epochs: list[EpochRecord] = field(default_factory=list)
    histogram: dict[str, Any] | None = None
    mixed_samples: int = 0
    diverged_epoch: int | None = None

    @property
    def final_test_acc(self) -> float:
        return self.epochs[-1].test_acc if self.epochs else float("nan")

    @property
    def visits(self) -> int:
        return sum(e.visits for e in self.epochs)

    @property
    def bytes_read(self) -> int:
        return sum(e.bytes_read for e in self.epochs)

    @property
    def bytes_not_read(self) -> int:
        return sum(e.bytes_not_read for e in self.epochs)

    @property
    def wall_s(self) -> float:
        return sum(e.wall_s for e in self.epochs)

    @property
    def cpu_s(self) -> float:
        return sum(e.cpu_s for e in self.epochs)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "RunResult":
        """Inverse of :meth:`to_json` (the histogram is not stored there)."""
        return cls(
            dataset=doc["dataset"],
            policy=doc["policy"],
            prune_ratio=float(doc["prune_ratio"]),
            seed=int(doc["seed"]),
            epochs=[EpochRecord(**e) for e in doc["epochs"]],
            mixed_samples=int(doc.get("mixed_samples", 0)),
            diverged_epoch=doc.get("diverged_epoch"),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary and per-epoch records (without the histogram arrays)."""
        doc = {k: v for k, v in asdict(self).items() if k != "histogram"}
        doc.update(
            final_test_acc=self.final_test_acc,
            visits=self.visits,
            bytes_read=self.bytes_read,
            bytes_not_read=self.bytes_not_read,
            wall_s=self.wall_s,
            cpu_s=self.cpu_s,
        )
        return doc


@dataclass(frozen=True)
class InputToFloat:
    """Loader transform: the input field as float32, so SwDPP's Mixup can blend it.

    Digits arrive as uint8 pixels, which Mixup cannot blend; a module-level class (not a
    lambda) so the transform pickles into loader worker processes.
    """

    field: str

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample[self.field] = np.asarray(sample[self.field], dtype=np.float32)
        return sample


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """Learning rate at fractional epoch ``progress``: linear warm-up, then cosine to 0."""
    if progress < cfg.warmup_epochs:
        return cfg.lr * (progress + 1e-3) / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    t = min((progress - cfg.warmup_epochs) / span, 1.0)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))


def per_sample_loss(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Cross-entropy per sample; a Mixup-blended sample gets ``lam * CE(y) + (1 - lam) * CE(y[partner])``.

    The loader marks blended samples with ``mixed`` and gives, per batch position, the
    partner's position ``mix_partner`` (-1 when unmixed) and ``mix_lambda``. The partner's
    label is its own, unblended label, so this equals the cross-entropy against the
    loader's soft ``target`` (``lam * onehot(y) + (1 - lam) * onehot(y[partner])``).
    """
    labels = batch["label"].long()
    loss = F.cross_entropy(logits, labels, reduction="none")
    mixed = batch.get("mixed")
    if not isinstance(mixed, torch.Tensor) or not bool(mixed.any()):
        return loss
    partner = batch["mix_partner"].long()
    lam = batch["mix_lambda"].to(loss.dtype)
    idx = torch.nonzero(mixed.bool()).squeeze(1)
    partner_loss = F.cross_entropy(logits[idx], labels[partner[idx]], reduction="none")
    mixed_loss = lam[idx] * loss[idx] + (1.0 - lam[idx]) * partner_loss
    return loss.index_put((idx,), mixed_loss)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 4096) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train()
    return correct / max(len(y), 1)


def policy_scores(policy: Any, snapshot: Any) -> np.ndarray:
    """The per-sample score a policy plans from: InfoBatch's latest loss, SwDPP's latest loss plus
    ``dynamics`` times the EMA of the loss change, the loss EMA otherwise (NaN where unseen)."""
    name = getattr(policy, "name", "")
    if name == "infobatch":
        return np.asarray(snapshot.loss, dtype=np.float64)
    if name == "swdpp":
        dynamics = float(getattr(policy, "params", {}).get("dynamics", 0.0))
        return np.asarray(snapshot.loss, dtype=np.float64) + dynamics * np.asarray(snapshot.delta_ema, dtype=np.float64)
    return np.asarray(snapshot.loss_ema, dtype=np.float64)


def train_policy(
    data: DemoData,
    policy_name: str,
    cfg: TrainConfig,
    work_dir: Path,
    *,
    test: tuple[torch.Tensor, torch.Tensor],
    progress: bool = True,
    position: int = 0,
) -> RunResult:
    """Train the dataset's model with one policy over the train shards; evaluate after every epoch.

    Args:
        data: Converted shards (see :func:`shardprune.demo.data.prepare_data`).
        policy_name: A name ``shardprune.policies.make_policy`` accepts.
        cfg: Shared training configuration.
        work_dir: Where this run's score store lives; emptied first so a run never resumes
            another's scores.
        test: Evaluation inputs and labels (the test split, or a validation split when choosing).
        progress: Show a tqdm bar over batches.
        position: tqdm bar position.
    """
    from tqdm.auto import tqdm

    from shardprune.loader import StreamingLoader
    from shardprune.policies import make_policy
    from shardprune.scores import ScoreStore
    from shardprune.train import weighted_loss

    cfg.check()
    torch.manual_seed(cfg.seed)
    model = make_model(data.name, data.in_features, data.num_classes)
    opt: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=SGD_MOMENTUM, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    store_dir = work_dir / "scores"
    if store_dir.exists():
        shutil.rmtree(store_dir)
    store_dir.parent.mkdir(parents=True, exist_ok=True)
    store = ScoreStore(
        str(store_dir),
        num_samples=len(data.train),
        dataset_fingerprint=data.train.fingerprint,
        ema_beta=cfg.ema_beta,
        flush_interval_s=None,
    )
    ratio = 0.0 if policy_name == "full" else cfg.prune_ratio
    policy = (
        make_policy(policy_name)
        if policy_name == "full"
        else make_policy(policy_name, prune_ratio=ratio, **dict(cfg.policy_params))
    )
    loader = StreamingLoader(
        data.train,
        batch_size=cfg.batch_size,
        policy=policy,
        store=store,
        num_epochs=cfg.epochs,
        seed=cfg.seed,
        num_workers=cfg.num_workers,
        drop_last=False,
        transform=InputToFloat(data.field),
    )
    result = RunResult(data.name, policy_name, ratio, cfg.seed)
    test_x, test_y = test
    bar = tqdm(
        total=cfg.epochs,
        desc=f"{data.name} {policy_name:<14}",
        unit="ep",
        position=position,
        leave=True,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(cfg.epochs):
            t0 = time.perf_counter()
            c0 = time.process_time()
            loader.set_epoch(epoch)
            store.set_epoch(epoch)
            steps = max(len(loader), 1)
            visits = 0
            loss_sum = 0.0
            for step, batch in enumerate(loader):
                for group in opt.param_groups:
                    group["lr"] = lr_at(cfg, epoch + step / steps)
                x = batch[data.field]
                logits = model(x)
                losses = per_sample_loss(logits, batch)
                if not bool(torch.isfinite(losses).all()):
                    # Diverged (the step was too large): the store refuses NaN losses, and
                    # training on would only repeat NaN; record the collapse and stop.
                    result.diverged_epoch = epoch
                    break
                loss = weighted_loss(batch, losses, store, mode=cfg.weighting)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n = int(batch["ids"].shape[0])
                visits += n
                loss_sum += float(losses.detach().sum())
                mixed = batch.get("mixed")
                if isinstance(mixed, torch.Tensor):
                    result.mixed_samples += int(mixed.sum())
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0
            stats = loader.epoch_stats
            if policy_name in HISTOGRAM_POLICIES and epoch == cfg.hist_epoch:
                result.histogram = _epoch_histogram(loader, policy, epoch)
            acc = accuracy(model, test_x, test_y)
            result.epochs.append(
                EpochRecord(
                    epoch=epoch,
                    visits=visits,
                    bytes_read=stats.bytes_read,
                    bytes_not_read=stats.bytes_not_read,
                    wall_s=wall,
                    cpu_s=cpu,
                    train_loss=loss_sum / max(visits, 1),
                    test_acc=acc,
                )
            )
            bar.set_postfix(kept=f"{visits / len(data.train):.2f}", acc=f"{acc:.3f}")
            bar.update(1)
            if result.diverged_epoch is not None:
                break
    finally:
        bar.close()
        loader.close()
        store.close()
    return result


def _epoch_histogram(loader: Any, policy: Any, epoch: int) -> dict[str, Any]:
    """Keep probabilities of ``epoch`` and the scores it was planned from (the loader's own)."""
    decision = loader.decision
    keep_prob = decision.keep_prob if decision.keep_prob is not None else decision.keep.astype(np.float64)
    return {
        "epoch": epoch,
        "keep_prob": np.asarray(keep_prob, dtype=np.float64),
        "score": policy_scores(policy, loader.snapshot),
    }
