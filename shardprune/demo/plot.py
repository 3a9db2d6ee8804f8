"""The demo's figure: test accuracy against cumulative sample visits per policy, and one epoch's
keep-probability and score histograms. matplotlib is the optional ``plots`` extra."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shardprune.demo.trainer import RunResult
from shardprune.errors import ConfigError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
            "plotting needs matplotlib: pip install 'shardprune[plots]' (or run the demo with --no-plot)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(results: Sequence[RunResult], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Write a PNG with accuracy-vs-visits curves (left) and histograms of one epoch (right).

    The histogram panels show, for each policy that recorded one (InfoBatch, SwDPP), the
    per-sample keep probability and the score the epoch was planned from (InfoBatch: the
    latest loss; SwDPP: latest loss plus ``dynamics`` times the EMA of the loss change).
    """
    plt = _pyplot()
    hists = [r for r in results if r.histogram is not None]
    ncols = 1 + (2 if hists else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2), squeeze=False)
    ax = axes[0][0]
    for r in results:
        visits = np.cumsum([e.visits for e in r.epochs])
        acc = [e.test_acc for e in r.epochs]
        label = r.policy if r.policy == "full" else f"{r.policy} (r={r.prune_ratio:g})"
        ax.plot(visits, acc, marker=".", markersize=3, label=label)
    ax.set_xlabel("cumulative sample visits")
    ax.set_ylabel("test accuracy")
    finals = [r.final_test_acc for r in results if r.epochs]
    if finals:
        ax.set_ylim(max(0.0, min(finals) - 0.15), min(1.0, max(finals) + 0.03))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("accuracy vs visits")
    if hists:
        ax_p, ax_s = axes[0][1], axes[0][2]
        for r in hists:
            h = r.histogram or {}
            keep = np.asarray(h.get("keep_prob", []), dtype=np.float64)
            score = np.asarray(h.get("score", []), dtype=np.float64)
            label = f"{r.policy} (epoch {h.get('epoch')})"
            if keep.size:
                ax_p.hist(keep, bins=np.linspace(0, 1, 41), alpha=0.55, label=label)
            score = score[np.isfinite(score)]
            if score.size:
                hi = float(np.quantile(score, 0.99)) or 1.0
                ax_s.hist(np.clip(score, 0, hi), bins=50, alpha=0.55, label=label)
        ax_p.set_xlabel("keep probability")
        ax_p.set_ylabel("samples")
        ax_p.set_yscale("log")
        ax_p.set_title("keep probability of one epoch")
        ax_p.legend(fontsize=8)
        ax_s.set_xlabel("score (infobatch: latest loss; swdpp: latest loss + change EMA), clipped at 99th pct", fontsize=8)
        ax_s.set_ylabel("samples")
        ax_s.set_title("scores the epoch was planned from")
        ax_s.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
