"""The demo (``python -m shardprune demo``): options, table, plot, and small real training runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shardprune.__main__ import main
from shardprune.demo.data import prepare_data
from shardprune.demo.report import format_table, table_rows
from shardprune.demo.trainer import EpochRecord, RunResult, TrainConfig, lr_at, per_sample_loss
from shardprune.errors import ConfigError
from shardprune.models import MLP, MNIST1DCNN, make_model

REPO = Path(__file__).resolve().parents[1]


def run_result(policy: str, ratio: float, accs: list[float], visits: list[int], nbytes: list[int], wall: list[float]) -> RunResult:
    epochs = [
        EpochRecord(epoch=i, visits=v, bytes_read=b, bytes_not_read=0, wall_s=w, train_loss=1.0, test_acc=a, cpu_s=w / 2)
        for i, (a, v, b, w) in enumerate(zip(accs, visits, nbytes, wall))
    ]
    return RunResult("mnist1d", policy, ratio, 0, epochs)


# ----------------------------------------------------------------------------- options


def test_help_lists_every_option() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shardprune", "demo", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for option in ("--dataset", "--num-samples", "--epochs", "--prune-ratio", "--seed", "--out", "--policies", "--threads"):
        assert option in proc.stdout


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--prune-ratio", "1.5"], "prune_ratio=1.5"),
        (["--prune-ratio", "0.95", "--policies", "full,infobatch"], "infobatch"),
        (["--epochs", "0"], "epochs=0"),
        (["--epochs", "ten"], "invalid int value: 'ten'"),
        (["--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["--dataset", "digits", "--num-samples", "5000"], "outside 1..1438"),
        (["--num-samples", "5"], "num_samples=5"),
        (["--policies", "random,swdpp"], "must include 'full'"),
        (["--policies", "full,magic"], "'magic'"),
        (["--lr", "-1"], "lr=-1"),
        (["--batch-size", "0"], "batch_size=0"),
        (["--seed", "-3"], "seed=-3"),
        (["--num-workers", "-1"], "num_workers=-1"),
        (["--threads", "0"], "--threads 0"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_option_is_one_line_and_exit_2(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        status = main(["demo", "--out", str(tmp_path / "out"), *argv])
        raise SystemExit(status)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert not (tmp_path / "out").exists(), "a rejected command must not start work"


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


# ----------------------------------------------------------------------------- table and plot


def test_table_fractions_are_relative_to_full() -> None:
    full = run_result("full", 0.0, [0.5, 0.9], [100, 100], [4000, 4000], [1.0, 1.0])
    rnd = run_result("random", 0.5, [0.4, 0.81], [50, 100], [2000, 4000], [0.5, 1.0])
    rows = table_rows([full, rnd])
    assert [r.policy for r in rows] == ["full", "random"]
    assert rows[0].acc_frac == rows[0].visits_frac == rows[0].bytes_frac == rows[0].wall_frac == 1.0
    assert rows[1].test_acc == 0.81
    assert rows[1].acc_frac == pytest.approx(0.9)
    assert rows[1].visits == 150 and rows[1].visits_frac == pytest.approx(0.75)
    assert rows[1].bytes_frac == pytest.approx(0.75)
    assert rows[1].wall_frac == pytest.approx(0.75)
    assert rows[1].cpu_s == pytest.approx(0.75) and rows[1].cpu_frac == pytest.approx(0.75)
    text = format_table(rows)
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| policy")
    assert "0.750" in lines[3] and "0.900" in lines[3] and "7.8 KiB" in lines[2]


def test_table_needs_a_full_run() -> None:
    with pytest.raises(ConfigError, match="'full'"):
        table_rows([run_result("random", 0.5, [0.4], [50], [2000], [0.5])])


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from shardprune.demo.plot import plot_results

    full = run_result("full", 0.0, [0.5, 0.9], [100, 100], [4000, 4000], [1.0, 1.0])
    sw = run_result("swdpp", 0.5, [0.4, 0.85], [100, 60], [4000, 2400], [1.0, 0.6])
    rng = np.random.default_rng(0)
    sw.histogram = {"epoch": 1, "keep_prob": rng.uniform(0, 1, 100), "score": rng.exponential(1.0, 100)}
    path = plot_results([full, sw], tmp_path / "p" / "demo.png", title="t")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


# ----------------------------------------------------------------------------- training pieces


def test_mixed_loss_is_lambda_mix_of_both_labels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    labels = torch.tensor([1, 2, 3, 4])
    batch = {
        "label": labels,
        "mixed": torch.tensor([False, True, False, True]),
        "mix_partner": torch.tensor([-1, 0, -1, 2]),
        "mix_lambda": torch.tensor([1.0, 0.3, 1.0, 0.8]),
    }
    got = per_sample_loss(logits, batch)
    ce = F.cross_entropy(logits, labels, reduction="none")
    ce_to = lambda i, y: F.cross_entropy(logits[i : i + 1], torch.tensor([y]))  # noqa: E731
    assert got[0] == pytest.approx(float(ce[0]))
    assert got[1] == pytest.approx(float(0.3 * ce_to(1, 2) + 0.7 * ce_to(1, 1)), rel=1e-5)
    assert got[3] == pytest.approx(float(0.8 * ce_to(3, 4) + 0.2 * ce_to(3, 3)), rel=1e-5)
    soft = torch.zeros(4, 10)
    soft[torch.arange(4), labels] = 1.0
    soft[1] = 0.3 * F.one_hot(torch.tensor(2), 10) + 0.7 * F.one_hot(torch.tensor(1), 10)
    soft[3] = 0.8 * F.one_hot(torch.tensor(4), 10) + 0.2 * F.one_hot(torch.tensor(3), 10)
    assert torch.allclose(got, -(soft * F.log_softmax(logits, 1)).sum(1), atol=1e-5)


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    cfg = TrainConfig(epochs=10, lr=0.1, warmup_epochs=1.0)
    assert lr_at(cfg, 0.0) < 0.001
    assert lr_at(cfg, 0.5) == pytest.approx(0.05, rel=0.01)
    assert lr_at(cfg, 1.0) == pytest.approx(0.1)
    assert lr_at(cfg, 5.5) == pytest.approx(0.05)
    assert lr_at(cfg, 10.0) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(cfg, 1 + 0.1 * k) for k in range(91)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_models_have_the_papers_shapes() -> None:
    cnn = make_model("mnist1d", 40, 10)
    assert isinstance(cnn, MNIST1DCNN)
    assert cnn(torch.zeros(7, 40)).shape == (7, 10)
    assert sum(p.numel() for p in cnn.parameters()) == 5210
    mlp = make_model("digits", 64, 10)
    assert isinstance(mlp, MLP)
    assert mlp(torch.zeros(3, 8, 8, dtype=torch.uint8)).shape == (3, 10)
    with pytest.raises(ConfigError, match="'cifar'"):
        make_model("cifar", 3072, 10)


def test_validation_split_is_carved_from_train(tmp_path: Path) -> None:
    val = prepare_data("digits", tmp_path, num_samples=100, validation=True)
    assert (len(val.train), len(val.test)) == (90, 10) and val.validation
    normal = prepare_data("digits", tmp_path, num_samples=100)
    assert (len(normal.train), len(normal.test)) == (100, 359) and not normal.validation
    first = normal.train.read_sample(95)["x"]
    assert np.array_equal(val.test.read_sample(5)["x"], first), "validation is the train split's tail"
    assert len(normal.train.header.shards) == 1 and len(val.train.header.shards) == 1


# ----------------------------------------------------------------------------- real runs through the loader

TINY = ["--num-samples", "400", "--epochs", "4", "--batch-size", "32", "--no-progress", "--threads", "1"]


def test_tiny_demo_writes_table_plot_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert table.strip() in printed
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    rows = {r["policy"]: r for r in doc["rows"]}
    assert list(rows) == ["full", "random", "infobatch", "swdpp"]
    assert doc["machine"]["torch_threads"] == 1 and "1 torch thread(s)" in printed
    n_train = doc["train_samples"]
    assert n_train == 320 and doc["test_samples"] == 80
    full = rows["full"]
    assert full["visits"] == 4 * n_train
    assert full["bytes_read"] > 0
    for name, row in rows.items():
        assert 0.0 <= row["test_acc"] <= 1.0
        assert row["visits_frac"] == pytest.approx(row["visits"] / full["visits"])
        assert row["bytes_frac"] == pytest.approx(row["bytes_read"] / full["bytes_read"])
        assert row["acc_frac"] == pytest.approx(row["test_acc"] / full["test_acc"])
        assert row["cpu_s"] > 0 and row["cpu_frac"] == pytest.approx(row["cpu_s"] / full["cpu_s"])
        if name != "full":
            # Epoch 0 reads every sample (all unseen, so all kept); later epochs prune.
            assert row["visits"] < full["visits"] and row["bytes_read"] < full["bytes_read"]
    runs = {r["policy"]: r for r in doc["runs"]}
    rnd = runs["random"]["epochs"]
    assert [e["visits"] for e in rnd] == [n_train, n_train // 2, n_train // 2, n_train // 2]
    for run in runs.values():
        for e in run["epochs"]:
            assert e["bytes_read"] + e["bytes_not_read"] == runs["full"]["epochs"][0]["bytes_read"]


def test_one_policy_run_is_deterministic(tmp_path: Path) -> None:
    from shardprune.demo.data import load_arrays
    from shardprune.demo.trainer import train_policy

    data = prepare_data("mnist1d", tmp_path, num_samples=300)
    test = load_arrays(data.test, data.field)
    # Mixup is off by default; turned on here so its draws are covered by the determinism check.
    cfg = TrainConfig(epochs=3, batch_size=32, lr=2e-2, prune_ratio=0.5, seed=7, policy_params=(("mixup_prob", 0.3),))
    first = train_policy(data, "swdpp", cfg, tmp_path / "a", test=test, progress=False)
    second = train_policy(data, "swdpp", cfg, tmp_path / "b", test=test, progress=False)
    assert first.visits == second.visits and first.visits < 3 * len(data.train)
    assert first.final_test_acc == second.final_test_acc
    assert [e.train_loss for e in first.epochs] == [e.train_loss for e in second.epochs]
    assert first.mixed_samples == second.mixed_samples > 0
    assert first.histogram is not None and second.histogram is not None
    assert np.array_equal(first.histogram["keep_prob"], second.histogram["keep_prob"])
    other = train_policy(data, "swdpp", TrainConfig(**{**cfg.__dict__, "seed": 8}), tmp_path / "c", test=test, progress=False)
    assert [e.train_loss for e in other.epochs] != [e.train_loss for e in first.epochs]
    assert not math.isnan(first.final_test_acc)


def test_digits_demo_runs_every_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    argv = ["demo", "--dataset", "digits", "--num-samples", "200", "--epochs", "3", "--no-progress", "--no-plot"]
    assert main([*argv, "--out", str(out), "--policies", "full,random,epsilon_greedy,ucb,infobatch,swdpp"]) == 0
    doc = json.loads((out / "results.json").read_text())
    runs = {r["policy"]: r for r in doc["runs"]}
    assert list(runs) == ["full", "random", "epsilon_greedy", "ucb", "infobatch", "swdpp"]
    assert runs["swdpp"]["mixed_samples"] == 0  # SwDPP's Mixup is off by default
    assert not (out / "demo.png").exists()
    assert "swdpp" in capsys.readouterr().out


def test_sgd_mixup_on_uint8_digits_and_divergence_is_recorded(tmp_path: Path) -> None:
    from shardprune.demo.data import load_arrays
    from shardprune.demo.trainer import train_policy

    # digits are uint8 pixels: SwDPP's Mixup needs the trainer's float transform to blend them.
    data = prepare_data("digits", tmp_path, num_samples=200)
    test = load_arrays(data.test, data.field)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=1, optimizer="sgd", policy_params=(("mixup_prob", 0.5),))
    run = train_policy(data, "swdpp", cfg, tmp_path / "mix", test=test, progress=False)
    assert run.mixed_samples > 0 and run.diverged_epoch is None and len(run.epochs) == 2
    assert all(math.isfinite(e.train_loss) for e in run.epochs)
    # A step far too large for SGD: the run stops at the first non-finite loss and says so.
    huge = TrainConfig(epochs=3, batch_size=32, lr=1e6, warmup_epochs=0, seed=1, optimizer="sgd")
    bad = train_policy(data, "full", huge, tmp_path / "bad", test=test, progress=False)
    assert bad.diverged_epoch is not None and len(bad.epochs) == bad.diverged_epoch + 1
    assert RunResult.from_json(bad.to_json()).diverged_epoch == bad.diverged_epoch


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("optimizer", "rmsprop", r"optimizer='rmsprop' is not one of adam, sgd"),
     ("weighting", "mean", r"weighting='mean' is not one of normalized, unbiased")],
)
def test_train_config_names_bad_optimizer_and_weighting(field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value}).check()


def test_train_bench_quick_runs_the_grid_and_checks_targets(tmp_path: Path) -> None:
    # benchmarks/train_bench.py --quick: the whole pipeline (grid, matched random, summary, verdicts, plot) on tiny data.
    out = tmp_path / "tb"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_bench.py"), "--quick", "--datasets", "digits", "--jobs", "1",
         "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    quick = tmp_path / "tb-quick"
    report = json.loads((quick / "summary.json").read_text())
    summary = report["datasets"]["digits sgd normalized"]
    policies = {(r["policy"], r["ratio"]) for r in summary["rows"]}
    assert policies == {("full", 0.0), *((p, 0.5) for p in ("random", "epsilon_greedy", "ucb", "infobatch", "swdpp")),
                        ("random=ib", 0.5), ("short=r", 0.5), ("short=ib", 0.5)}
    assert summary["config"]["num_samples"] == 400 and summary["config"]["epochs"] == 4
    assert summary["config"]["optimizer"] == "sgd" and summary["config"]["lr"] == 0.2
    assert [v.split(":")[0] for v in summary["verdicts"]] == [
        "digits sgd normalized infobatch r=0.5", "digits sgd normalized swdpp r=0.5"
    ]
    rows = {r["policy"]: r for r in summary["rows"]}
    # The matched random run lands on InfoBatch's visits (the linear fit is exact for random pruning).
    assert abs(rows["random=ib"]["visits_saved"][0] - rows["infobatch"]["visits_saved"][0]) < 0.02
    assert rows["full"]["visits_saved"][0] == 0.0 and rows["random"]["visits_saved"][0] > 0.3
    # The shorter schedule runs whole epochs: 4 epochs at random's 62.5% of the visits -> 2 or 3 epochs.
    assert rows["short=r"]["ratio_used"][0] in (2, 3) and rows["short=r"]["visits_saved"][0] in (0.25, 0.5)
    for name in ("random", "infobatch", "swdpp"):
        assert {"lossless", "beats_short", "collapsed"} <= set(rows[name])
    assert rows["random"]["beats_random"] is None and isinstance(rows["swdpp"]["beats_random"], bool)
    assert (quick / "plots" / "train_digits_sgd_normalized.png").read_bytes()[:4] == b"\x89PNG"
    md = (quick / "summary.md").read_text()
    assert "| policy |" in md and "beats shorter" in md and "full, " in md


def _train_bench() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_bench", REPO / "benchmarks" / "train_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_bench"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_train_bench_policy_params_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tb = _train_bench()
    args = tb.parse_args(["--policy-params", "swdpp:mixup_prob=0,max_weight=None", "--out", str(tmp_path)])
    assert args.policy_params == {"swdpp": [(("mixup_prob", 0.0), ("max_weight", None))]}
    specs, base = tb.grid(args, "digits")
    variants = [s for s in specs if s.params]
    assert len(variants) == 3 * 3 and {s.display for s in variants} == {"swdpp(mixup_prob=0, max_weight=None)"}
    assert len({s.name for s in specs}) == len(specs), "every run has its own file name"
    assert variants[0].config().policy_params == (("mixup_prob", 0.0), ("max_weight", None))
    cal = tb.parse_args(["--calibrate", "--cal-params", ";mixup_prob=0"])
    assert cal.cal_params == [(), (("mixup_prob", 0.0),)]
    for bad, needle in ((["--policy-params", "magic:x=1"], "magic:x=1"), (["--policy-params", "swdpp:mixup_prob"], "name=value")):
        with pytest.raises(SystemExit) as raised:
            tb.parse_args(bad)
        assert raised.value.code == 2 and needle in capsys.readouterr().err
