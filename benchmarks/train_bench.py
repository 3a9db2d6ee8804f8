#!/usr/bin/env python
"""Training benchmark: does pruning inside the loader keep accuracy for fewer visits and bytes?

    python benchmarks/train_bench.py --jobs 2                      # the grid below: both datasets, SGD and Adam
    python benchmarks/train_bench.py --quick                        # smoke run: tiny data, 4 epochs, 1 seed, SGD
    python benchmarks/train_bench.py --datasets mnist1d --optimizers sgd --seeds 0,1,2   # a smaller grid
    python benchmarks/train_bench.py --weightings unbiased --ratios 0.7 --no-short        # weighted_loss's other mode
    python benchmarks/train_bench.py --calibrate --optimizers sgd --cal-lr 0.05,0.1,0.2  # tune on validation
    python benchmarks/train_bench.py --calibrate --cal-policy random,swdpp --cal-ratio 0.3 --cal-params ';mixup_prob=0.1'
    python benchmarks/train_bench.py --report-only                  # re-aggregate saved runs

Every (dataset, optimizer, weighting mode, policy, prune ratio, seed) trains the dataset's
model (the MNIST-1D paper's 1D CNN; an MLP for digits) with
:func:`shardprune.demo.trainer.train_policy` through the streaming loader, with the same
epochs, batch size and learning-rate schedule for every policy. The optimisers are SGD with
momentum 0.9 and Adam, each at the learning rate tuned once for *full* training on a
validation split carved from the train split (its last 10%; ``--calibrate``); the test split
is only ever used for the final numbers.

Baselines beside every pruning row, at the same number of sample visits:

* random pruning: at the same r for policies whose r is the real fraction pruned (random,
  SwDPP); InfoBatch's r prunes only the well-learned samples, so each InfoBatch run also
  gets a random run whose ratio is matched to its measured visits (``random=ib``);
* "full, fewer epochs, same visits": full training for ``round(share * epochs)`` epochs,
  where ``share`` is random's (``short=r``) or InfoBatch's (``short=ib``) measured share of
  full's visits, with the whole learning-rate schedule compressed into those epochs.

The table says per policy whether it is lossless (mean accuracy not below full's mean minus
one std), beats random and beats the shorter schedule at the same visits (on average over the
common seeds), and in how many seeds it collapsed (diverged, or below half of full's accuracy).

Each run is written to ``<out>/runs/<name>.json`` as soon as it finishes; a cut-off
benchmark continues where it stopped when run again with the same arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shardprune.demo.data import prepare_data  # noqa: E402
from shardprune.demo.trainer import DATASET_DEFAULTS, OPTIMIZERS, TrainConfig  # noqa: E402
from shardprune.train import DEFAULT_WEIGHT_MODE, WEIGHT_MODES  # noqa: E402

PRUNING_POLICIES = ("random", "epsilon_greedy", "ucb", "infobatch", "swdpp")
MATCHED = "random=ib"
#: Labels of "full, fewer epochs, same visits": matched to random's (and SwDPP's) visits at r,
#: or to InfoBatch's.
SHORT = "short=r"
SHORT_IB = "short=ib"
DEFAULT_SAMPLES = {"mnist1d": 5000, "digits": None}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    dataset: str
    num_samples: int | None
    policy: str
    prune_ratio: float
    seed: int
    epochs: int
    batch_size: int
    lr: float
    ema_beta: float = 0.9
    validation: bool = False
    label: str = ""
    params: tuple[tuple[str, float | None], ...] = ()
    optimizer: str = "adam"
    weighting: str = DEFAULT_WEIGHT_MODE

    @property
    def name(self) -> str:
        tag = self.label or self.policy
        val = "-val" if self.validation else ""
        extra = "".join(f"-{k}{v:g}" if v is not None else f"-{k}None" for k, v in self.params)
        return (
            f"{self.dataset}{val}-n{self.num_samples or 'all'}-{tag}-r{self.prune_ratio:.4f}-s{self.seed}"
            f"-e{self.epochs}-b{self.batch_size}-lr{self.lr:g}-beta{self.ema_beta:g}{extra}"
            f"-{self.optimizer}-{self.weighting}"
        ).replace("=", "_")

    @property
    def display(self) -> str:
        """The policy as tables name it: ``swdpp(mixup_prob=0)`` when it has extra parameters."""
        if not self.params:
            return self.policy
        return f"{self.policy}({', '.join(f'{k}={v:g}' if v is not None else f'{k}=None' for k, v in self.params)})"

    def config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            prune_ratio=self.prune_ratio,
            seed=self.seed,
            ema_beta=self.ema_beta,
            policy_params=self.params,
            optimizer=self.optimizer,
            weighting=self.weighting,
        )


def parse_params(text: str) -> tuple[tuple[str, float | None], ...]:
    """``"mixup_prob=0,max_weight=5"`` -> ``(("mixup_prob", 0.0), ("max_weight", 5.0))`` ("None" allowed)."""
    out: list[tuple[str, float | None]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"policy parameter {item!r} must look like name=value, e.g. mixup_prob=0")
        out.append((key.strip(), None if value.strip() == "None" else float(value)))
    return tuple(out)


def jsonable(spec: RunSpec) -> dict[str, Any]:
    """``asdict(spec)`` as it reads back from JSON (tuples become lists)."""
    doc: dict[str, Any] = json.loads(json.dumps(asdict(spec)))
    return doc


# ----------------------------------------------------------------------------- running


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_one(spec: RunSpec, root: Path) -> dict[str, Any]:
    """Train one spec (in a pool process) and write its JSON; return the document."""
    from shardprune.demo.data import load_arrays
    from shardprune.demo.trainer import train_policy

    data = prepare_data(spec.dataset, root, num_samples=spec.num_samples, validation=spec.validation)
    test = load_arrays(data.test, data.field)
    t0 = time.perf_counter()
    result = train_policy(data, spec.policy, spec.config(), root / "work" / spec.name, test=test, progress=False)
    doc = {
        "spec": asdict(spec),
        "result": result.to_json(),
        "total_s": time.perf_counter() - t0,
        "train_samples": len(data.train),
        "eval_samples": len(data.test),
    }
    path = root / "runs" / f"{spec.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
    return doc


def load_done(root: Path, specs: list[RunSpec]) -> dict[RunSpec, dict[str, Any]]:
    done: dict[RunSpec, dict[str, Any]] = {}
    for spec in specs:
        path = root / "runs" / f"{spec.name}.json"
        if path.exists():
            doc = json.loads(path.read_text())
            saved = dict(doc.get("spec") or {})
            saved.setdefault("params", [])  # runs saved before RunSpec had parameters
            if saved == jsonable(spec):
                done[spec] = doc
    return done


def execute(specs: list[RunSpec], root: Path, jobs: int) -> dict[RunSpec, dict[str, Any]]:
    """Run the specs not already on disk, ``jobs`` at a time; return every spec's document."""
    from tqdm.auto import tqdm

    (root / "runs").mkdir(parents=True, exist_ok=True)
    done = load_done(root, specs)
    todo = [s for s in specs if s not in done]
    # Convert each dataset once here, so pool processes only read it.
    for key in sorted({(s.dataset, s.num_samples, s.validation) for s in todo}, key=str):
        prepare_data(key[0], root, num_samples=key[1], validation=key[2])
    if not todo:
        return done
    threads = max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=len(specs), initial=len(done), desc="runs", unit="run", dynamic_ncols=True)
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads,)) as ex:
        futures = {ex.submit(run_one, s, root): s for s in todo}
        for fut in as_completed(futures):
            spec = futures[fut]
            doc = fut.result()
            done[spec] = doc
            r = doc["result"]
            bar.set_postfix_str(f"{spec.dataset} {spec.label or spec.policy} r={spec.prune_ratio:.2f} acc={r['final_test_acc']:.3f}")
            bar.update(1)
    bar.close()
    return done


def matched_ratio(full_visits: float, random_visits: float, random_ratio: float, target_visits: float) -> float:
    """The random ratio whose visits equal ``target_visits``.

    Random pruning's visits fall linearly with ``r`` (a fixed budget ``round((1 - r) N)`` in
    each pruning epoch), so two measured points (``r = 0``: full; ``random_ratio``) give the line.
    """
    slope = (full_visits - random_visits) / random_ratio
    if slope <= 0:
        return 0.0
    return float(min(max((full_visits - target_visits) / slope, 0.0), 0.95))


# ----------------------------------------------------------------------------- grid


def grid(
    args: argparse.Namespace, dataset: str, optimizer: str = "adam", weighting: str = DEFAULT_WEIGHT_MODE
) -> tuple[list[RunSpec], RunSpec]:
    d = DATASET_DEFAULTS[dataset]
    base = RunSpec(
        dataset=dataset,
        num_samples=args.num_samples if args.num_samples is not None else DEFAULT_SAMPLES[dataset],
        policy="full",
        prune_ratio=0.0,
        seed=0,
        epochs=args.epochs or d["epochs"],
        batch_size=d["batch_size"],
        lr=d["sgd_lr"] if optimizer == "sgd" else d["lr"],
        ema_beta=d["ema_beta"],
        optimizer=optimizer,
        weighting=weighting,
    )
    specs = []
    for seed in args.seeds:
        specs.append(replace(base, seed=seed))
        for ratio, policy in itertools.product(args.ratios, args.policies):
            specs.append(replace(base, seed=seed, policy=policy, prune_ratio=ratio))
            for params in args.policy_params.get(policy, []):
                specs.append(replace(base, seed=seed, policy=policy, prune_ratio=ratio, params=params))
    return specs, base


def matched_specs(base: RunSpec, args: argparse.Namespace, done: dict[RunSpec, dict[str, Any]]) -> list[RunSpec]:
    """A random run per InfoBatch run, at the ratio giving InfoBatch's measured visits."""
    out: list[RunSpec] = []
    if "infobatch" not in args.policies or "random" not in args.policies:
        return out
    for seed, ratio in itertools.product(args.seeds, args.ratios):
        full = done.get(replace(base, seed=seed))
        rnd = done.get(replace(base, seed=seed, policy="random", prune_ratio=ratio))
        ib = done.get(replace(base, seed=seed, policy="infobatch", prune_ratio=ratio))
        if not (full and rnd and ib):
            continue
        r = matched_ratio(full["result"]["visits"], rnd["result"]["visits"], ratio, ib["result"]["visits"])
        out.append(replace(base, seed=seed, policy="random", prune_ratio=round(r, 4), label=f"{MATCHED}{ratio:g}"))
    return out


def short_specs(base: RunSpec, args: argparse.Namespace, done: dict[RunSpec, dict[str, Any]]) -> list[RunSpec]:
    """"Full, fewer epochs, same visits": a full run whose epoch count gives random's visits at each r
    (SwDPP's too: its r is the real fraction pruned), and one for InfoBatch's measured visits.

    The learning-rate schedule is a function of progress through the run's own epochs, so the
    shorter run sweeps the whole schedule; epochs are whole, so visits match to 1 / epochs.
    """
    out: list[RunSpec] = []
    if not args.short:
        return out
    for seed, ratio in itertools.product(args.seeds, args.ratios):
        full = done.get(replace(base, seed=seed))
        if not full:
            continue
        for policy, label in (("random", SHORT), ("infobatch", SHORT_IB)):
            run = done.get(replace(base, seed=seed, policy=policy, prune_ratio=ratio))
            if policy not in args.policies or not run:
                continue
            share = run["result"]["visits"] / full["result"]["visits"]
            epochs = max(1, int(round(share * base.epochs)))
            out.append(replace(base, seed=seed, epochs=epochs, label=f"{label}{ratio:g}"))
    return out


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    from machineinfo import machine_info  # benchmarks/ is on sys.path when run as a script
    import torch

    return {**machine_info(torch=torch.__version__), "gpu": "none (CPU only; no GPU was lent in this session)"}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(dataset: str, base: RunSpec, args: argparse.Namespace, done: dict[RunSpec, dict[str, Any]]) -> dict[str, Any]:
    """Per (policy, ratio): mean and std over seeds of accuracy and savings relative to full."""

    def same_setting(spec: RunSpec) -> bool:
        # The shorter schedule differs from full only in its epochs.
        epochs = base.epochs if spec.label.startswith(("short=",)) else spec.epochs
        return replace(spec, policy=base.policy, prune_ratio=0.0, label="", seed=base.seed, params=(), epochs=epochs) == base

    fulls = {s.seed: d for s, d in done.items() if same_setting(s) and s.policy == "full" and not s.label}
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for spec, doc in done.items():
        if spec.seed not in fulls or spec.validation or not same_setting(spec):
            continue
        label = next((lab for lab in (MATCHED, SHORT_IB, SHORT) if spec.label.startswith(lab)), None)
        if label is not None:
            key = (label, float(spec.label[len(label) :]))
        else:
            key = (spec.display, spec.prune_ratio)
        full = fulls[spec.seed]["result"]
        r = doc["result"]
        groups.setdefault(key, []).append(
            {
                "seed": spec.seed,
                "acc": r["final_test_acc"],
                "diverged": r.get("diverged_epoch") is not None,
                "ratio_used": spec.prune_ratio if not spec.label.startswith("short=") else spec.epochs,
                "visits_saved": 1 - r["visits"] / full["visits"],
                "bytes_not_read": r["bytes_not_read"] / max(r["bytes_read"] + r["bytes_not_read"], 1),
                "bytes_saved": 1 - r["bytes_read"] / full["bytes_read"],
                "bytes_not_read_mib": r["bytes_not_read"] / 2**20,
                "wall_saved": 1 - r["wall_s"] / full["wall_s"],
                "wall_s": r["wall_s"],
                "cpu_saved": 1 - r["cpu_s"] / full["cpu_s"],
            }
        )
    rows = []
    for (policy, ratio), items in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0] != "full", kv[0][0])):
        row: dict[str, Any] = {"policy": policy, "ratio": ratio, "seeds": sorted(i["seed"] for i in items)}
        for k in (
            "acc", "visits_saved", "bytes_not_read", "bytes_not_read_mib", "bytes_saved", "wall_saved", "wall_s",
            "cpu_saved", "ratio_used",
        ):
            row[k] = _mean_std([i[k] for i in items])
        row["acc_by_seed"] = {i["seed"]: i["acc"] for i in items}
        row["diverged"] = sum(i["diverged"] for i in items)
        rows.append(row)
    return {"dataset": dataset, "rows": rows}


def _peer(rows: list[dict[str, Any]], name: str, ratio: float) -> dict[str, Any] | None:
    return next((p for p in rows if p["policy"] == name and p["ratio"] == ratio), None)


def _beats(row: dict[str, Any], peer: dict[str, Any] | None) -> tuple[bool | None, list[float]]:
    """Whether ``row`` is ahead of ``peer`` on average over their common seeds, and the per-seed gaps."""
    if peer is None:
        return None, []
    seeds = sorted(set(row["acc_by_seed"]) & set(peer["acc_by_seed"]))
    diffs = [row["acc_by_seed"][s] - peer["acc_by_seed"][s] for s in seeds]
    return (bool(diffs) and float(np.mean(diffs)) > 0), diffs


def judge(summary: dict[str, Any]) -> None:
    """Add to every pruning row: lossless, beats random and the shorter schedule at the same visits, collapsed.

    * lossless: mean accuracy not below full's mean minus full's std (above is fine);
    * beats random: ahead of random pruning at the same visits (random at the same r for
      every policy whose r is the real fraction pruned; for InfoBatch, random at the ratio
      matched to its measured visits), on average over the common seeds;
    * beats shorter: ahead of full training for fewer epochs at the same visits;
    * collapsed: seeds that diverged or ended below half of full's mean accuracy.
    """
    rows = summary["rows"]
    full = next((r for r in rows if r["policy"] == "full"), None)
    if full is None:
        return
    f_mean, f_std = full["acc"]
    for r in rows:
        if r["policy"] == "full" or r["policy"] in (MATCHED, SHORT, SHORT_IB):
            continue
        ratio = r["ratio"]
        is_ib = r["policy"].split("(")[0] == "infobatch"
        random_peer = _peer(rows, MATCHED, ratio) if is_ib else (None if r["policy"] == "random" else _peer(rows, "random", ratio))
        short_peer = _peer(rows, SHORT_IB if is_ib else SHORT, ratio)
        r["lossless"] = bool(r["acc"][0] >= f_mean - f_std)
        r["beats_random"], r["random_gaps"] = _beats(r, random_peer)
        r["beats_short"], r["short_gaps"] = _beats(r, short_peer)
        r["collapsed"] = int(sum(a < 0.5 * f_mean for a in r["acc_by_seed"].values()))


def verdicts(summary: dict[str, Any]) -> list[str]:
    """The targets, checked for InfoBatch and SwDPP: lossless, ahead of random and of the shorter schedule."""
    rows = summary["rows"]
    full = next((r for r in rows if r["policy"] == "full"), None)
    if full is None:
        return []
    judge(summary)
    f_mean, f_std = full["acc"]
    out = []
    for r in rows:
        if r["policy"].split("(")[0] not in ("infobatch", "swdpp"):
            continue
        peer_name = MATCHED if r["policy"].startswith("infobatch") else "random"

        def gaps(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"{np.mean(values) * 100:+.2f} pt (per seed {', '.join(f'{d * 100:+.1f}' for d in values)})"

        out.append(
            f"{summary['dataset']} {r['policy']} r={r['ratio']:g}: visits saved {r['visits_saved'][0]:.1%}, "
            f"acc {r['acc'][0]:.4f} vs full {f_mean:.4f} +- {f_std:.4f} -> "
            f"{'lossless' if r['lossless'] else 'NOT lossless'}; vs {peer_name} at the same visits: "
            f"{gaps(r['random_gaps'])}; vs the shorter schedule: {gaps(r['short_gaps'])}"
            + (f"; COLLAPSED in {r['collapsed']} seed(s)" if r["collapsed"] else "")
        )
    return out


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def markdown(summary: dict[str, Any]) -> str:
    judge(summary)
    head = (
        "| policy | r | seeds | test acc (mean ± std) | visits saved | lossless | beats random | beats shorter | "
        "collapsed | bytes not read | CPU time saved | wall s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in summary["rows"]:
        name = r["policy"]
        if name == MATCHED:
            name = f"random matched to infobatch (r≈{r['ratio_used'][0]:.2f})"
        elif name in (SHORT, SHORT_IB):
            peer = "random/swdpp" if name == SHORT else "infobatch"
            name = f"full, {r['ratio_used'][0]:.3g} epochs (visits of {peer})"
        flags = (
            f"{_yes(r.get('lossless'))} | {_yes(r.get('beats_random'))} | {_yes(r.get('beats_short'))} | "
            f"{r.get('collapsed', 0)}/{len(r['seeds'])}"
            if "lossless" in r
            else " |  |  | "
        )
        lines.append(
            f"| {name} | {r['ratio']:g} | {len(r['seeds'])} | {r['acc'][0]:.4f} ± {r['acc'][1]:.4f} | "
            f"{r['visits_saved'][0]:.1%} | {flags} | {r['bytes_not_read'][0]:.1%} | "
            f"{r['cpu_saved'][0]:+.1%} ± {r['cpu_saved'][1]:.1%} | {r['wall_s'][0]:.1f} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    rows = summary["rows"]
    full = next((r for r in rows if r["policy"] == "full"), None)
    if full:
        m, s = full["acc"]
        ax.axhspan(m - s, m + s, color="0.85", label=f"full ± std ({m:.3f})")
        ax.axhline(m, color="0.4", lw=1)
    styles = {"random": "s", MATCHED: "D", "epsilon_greedy": "v", "ucb": "^", "infobatch": "o", "swdpp": "*"}
    for name in dict.fromkeys(r["policy"] for r in rows):
        if name not in styles and name != "full":
            styles[name] = "x"
    for policy, marker in styles.items():
        pts = sorted((r["visits_saved"][0], r["acc"][0], r["acc"][1]) for r in rows if r["policy"] == policy)
        if not pts:
            continue
        x, y, e = zip(*pts)
        label = "random (matched to infobatch visits)" if policy == MATCHED else policy
        ax.errorbar(np.array(x) * 100, y, yerr=e, marker=marker, capsize=3, lw=1, ms=6, label=label)
    ax.set_xlabel("sample visits saved vs full (%)")
    ax.set_ylabel("final test accuracy (mean ± std over seeds)")
    ratios = ", ".join(f"{r:g}" for r in sorted({r["ratio"] for r in rows if r["policy"] != "full"}))
    ax.set_title(f"{summary['dataset']}: accuracy vs visits saved (r = {ratios})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary_markdown(report: dict[str, Any]) -> str:
    """Every dataset's table and verdicts, as Markdown (written to ``<out>/summary.md``)."""
    parts = [f"command: `{report['command']}`", ""]
    for dataset, summary in report["datasets"].items():
        parts += [f"### {dataset}", "", f"config: {summary['config']}", "", markdown(summary), ""]
        parts += [f"- {line}" for line in summary["verdicts"]] + [""]
    parts.append(f"machine: {report['machine']}; elapsed {report['elapsed_s']:.0f} s")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- calibration


def calibrate(args: argparse.Namespace, root: Path) -> int:
    """Grid over (epochs, batch size, lr, ema_beta, policy parameters) on the validation split.

    ``--cal-policy`` may list several policies (``full,random,swdpp``); ``--cal-params``
    alternatives apply to the policies other than ``full`` and ``random``.
    """
    out_lines = []
    policies = args.cal_policy.split(",")
    for dataset, optimizer, weighting in itertools.product(args.datasets, args.optimizers, args.weightings):
        d = DATASET_DEFAULTS[dataset]
        default_lr = d["sgd_lr"] if optimizer == "sgd" else d["lr"]
        # full and random have no parameters to vary: they run once, as the references.
        specs = list(
            dict.fromkeys(
                RunSpec(
                    dataset, args.num_samples or DEFAULT_SAMPLES[dataset], policy,
                    0.0 if policy == "full" else args.cal_ratio, seed, e, b, lr, beta, validation=True,
                    params=() if policy in ("full", "random") else params, optimizer=optimizer, weighting=weighting,
                )
                for policy, e, b, lr, beta, params, seed in itertools.product(
                    policies,
                    args.cal_epochs or [d["epochs"]],
                    args.cal_batch or [d["batch_size"]],
                    args.cal_lr or [default_lr],
                    args.cal_beta or [d["ema_beta"]],
                    args.cal_params,
                    args.seeds,
                )
            )
        )
        done = execute(specs, root, args.jobs)
        table: dict[tuple[int, int, float, float, str, float], list[float]] = {}
        for spec, doc in done.items():
            key = (spec.epochs, spec.batch_size, spec.lr, spec.ema_beta, spec.display, spec.prune_ratio)
            table.setdefault(key, []).append(doc["result"]["final_test_acc"])
        out_lines.append(
            f"\n{dataset} {optimizer} {weighting}: validation accuracy (last 10% of train), seeds {args.seeds}"
        )
        out_lines.append(
            "| epochs | batch | lr | ema_beta | policy | r | val acc mean ± std | per seed |\n|---|---|---|---|---|---|---|---|"
        )
        ranked = sorted(table.items(), key=lambda kv: -float(np.mean(kv[1])))
        for (e, b, lr, beta, shown, ratio), accs in ranked:
            m, sd = _mean_std(accs)
            out_lines.append(
                f"| {e} | {b} | {lr:g} | {beta:g} | {shown} | {ratio:g} | {m:.4f} ± {sd:.4f} | "
                f"{' '.join(f'{a:.3f}' for a in accs)} |"
            )
    text = "\n".join(out_lines)
    print(text)
    with open(root / "calibration.md", "a") as f:
        f.write(f"\ncommand: `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`\n" + text + "\n")
    return 0


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def floats(text: str) -> list[float]:
        return [float(t) for t in text.split(",") if t]

    def ints(text: str) -> list[int]:
        return [int(t) for t in text.split(",") if t]

    ap.add_argument("--datasets", type=lambda t: t.split(","), default=["mnist1d", "digits"], help="comma-separated")
    ap.add_argument("--num-samples", type=int, default=None, help="mnist1d: generated samples (default 5000: 4000 train)")
    ap.add_argument("--seeds", type=ints, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--ratios", type=floats, default=[0.3, 0.5, 0.7], help="prune ratios (default 0.3,0.5,0.7)")
    ap.add_argument(
        "--policies", type=lambda t: t.split(","), default=list(PRUNING_POLICIES), help="pruning policies (full always runs)"
    )
    ap.add_argument("--epochs", type=int, default=None, help="override the per-dataset epochs")
    ap.add_argument(
        "--optimizers", type=lambda t: t.split(","), default=["sgd", "adam"],
        help="comma-separated: sgd (momentum 0.9, the dataset's sgd_lr) and/or adam (default both)",
    )
    ap.add_argument(
        "--weightings", type=lambda t: t.split(","), default=[DEFAULT_WEIGHT_MODE],
        help=f"weighted_loss modes to run, from {', '.join(WEIGHT_MODES)} (default {DEFAULT_WEIGHT_MODE})",
    )
    ap.add_argument(
        "--no-short", dest="short", action="store_false",
        help="skip the rows 'full, fewer epochs, same visits' (run by default)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="parallel training processes, at most 2 (default 2)")
    ap.add_argument("--out", type=Path, default=REPO / ".bench" / "train", help="runs and data (default .bench/train)")
    ap.add_argument("--plots", type=Path, default=REPO / "benchmarks" / "plots", help="PNG directory")
    ap.add_argument("--report-only", action="store_true", help="aggregate the saved runs, train nothing")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 400 samples, 4 epochs, seed 0, r=0.5, SGD, under <out>-quick (numbers mean nothing)",
    )
    ap.add_argument("--calibrate", action="store_true", help="choose hyper-parameters on the validation split")
    ap.add_argument("--cal-epochs", type=ints, default=None, help="calibration epochs grid (default: the dataset's)")
    ap.add_argument("--cal-batch", type=ints, default=None, help="calibration batch grid (default: the dataset's)")
    ap.add_argument("--cal-lr", type=floats, default=None, help="calibration lr grid (default: the dataset's)")
    ap.add_argument("--cal-beta", type=floats, default=None, help="calibration store ema_beta grid")
    ap.add_argument(
        "--cal-params",
        type=lambda t: [parse_params(x) for x in t.split(";")],
        default=[()],
        help="calibration alternatives of policy parameters, ';'-separated, each name=value,...; an empty "
        "alternative is the defaults (e.g. ';mixup_prob=0;max_weight=5')",
    )
    ap.add_argument(
        "--policy-params",
        action="append",
        default=[],
        metavar="POLICY:NAME=VALUE,...",
        help="also run POLICY with these parameters beside its defaults, at every ratio and seed "
        "(repeatable; e.g. swdpp:mixup_prob=0)",
    )
    ap.add_argument("--cal-policy", default="full", help="policies to calibrate, comma-separated (default full)")
    ap.add_argument("--cal-ratio", type=float, default=0.5, help="their prune ratio (default 0.5)")
    args = ap.parse_args(argv)
    extra: dict[str, list[tuple[tuple[str, float | None], ...]]] = {}
    for item in args.policy_params:
        policy, sep, rest = item.partition(":")
        if not sep or policy not in PRUNING_POLICIES:
            ap.error(f"--policy-params {item!r}: expected POLICY:name=value,... with POLICY in {PRUNING_POLICIES}")
        try:
            extra.setdefault(policy, []).append(parse_params(rest))
        except ValueError as exc:
            ap.error(f"--policy-params {item!r}: {exc}")
    args.policy_params = extra
    if args.quick:
        args.num_samples, args.epochs, args.seeds, args.ratios = 400, 4, [0], [0.5]
        args.optimizers = ["sgd"]
        args.out = args.out.with_name(args.out.name + "-quick")
        args.plots = args.out / "plots"
    if not 1 <= args.jobs <= 2:
        ap.error(f"--jobs {args.jobs}: use 1 or 2 (the machine has 2 cores shared with other work)")
    for name, values, allowed in (("--optimizers", args.optimizers, OPTIMIZERS), ("--weightings", args.weightings, WEIGHT_MODES)):
        if not values or set(values) - set(allowed):
            ap.error(f"{name} {','.join(values)}: expected names from {', '.join(allowed)}")
    unknown = sorted(set(args.datasets) - set(DATASET_DEFAULTS))
    if unknown:
        ap.error(f"--datasets {unknown}: expected names from {sorted(DATASET_DEFAULTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root: Path = args.out
    root.mkdir(parents=True, exist_ok=True)
    if args.calibrate:
        return calibrate(args, root)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "datasets": {}}
    for dataset, optimizer, weighting in itertools.product(args.datasets, args.optimizers, args.weightings):
        setting = f"{dataset} {optimizer} {weighting}"
        specs, base = grid(args, dataset, optimizer, weighting)
        done = load_done(root, specs) if args.report_only else execute(specs, root, args.jobs)
        extra = matched_specs(base, args, done) + short_specs(base, args, done)
        done.update(load_done(root, extra) if args.report_only else execute(extra, root, args.jobs))
        summary = summarize(setting, base, args, done)
        summary["config"] = {k: v for k, v in asdict(base).items() if k not in ("policy", "prune_ratio", "seed", "label")}
        summary["verdicts"] = verdicts(summary)
        report["datasets"][setting] = summary
        png = args.plots / f"train_{dataset}_{optimizer}_{weighting}.png"
        plot(summary, png)
        print(f"\n## {setting} ({summary['config']})\n")
        print(markdown(summary))
        print()
        for line in summary["verdicts"]:
            print("- " + line)
        print(f"plot: {png.relative_to(REPO) if png.is_relative_to(REPO) else png}")
    report["machine"] = machine()
    report["elapsed_s"] = time.perf_counter() - t0
    digest = hashlib.sha256(json.dumps(report["datasets"], sort_keys=True, default=str).encode()).hexdigest()[:12]
    report["digest"] = digest
    (root / "summary.json").write_text(json.dumps(report, indent=1, default=str))
    (root / "summary.md").write_text(summary_markdown(report))
    print(f"\nmachine: {report['machine']}")
    print(f"elapsed {report['elapsed_s']:.0f} s; summary: {root / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
