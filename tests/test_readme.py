"""The README's commands and code are true: its make_shards lines parse, its training loop runs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
sys.path.insert(0, str(REPO / "tools"))

import make_shards  # noqa: E402

from shardprune import ScoreStore, open_dataset  # noqa: E402


def _python_block(after_heading: str) -> str:
    section = README[README.index(after_heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python block after {after_heading!r}"
    return match.group(1)


def _make_shards_lines() -> list[list[str]]:
    lines = [line.strip() for line in README.splitlines() if line.strip().startswith("python tools/make_shards.py")]
    return [shlex.split(line)[2:] for line in lines]


def _stored_visits(out: Path) -> tuple[int, np.ndarray]:
    """The dataset's length and the visits per sample the run under ``out`` left in its score store."""
    ds = open_dataset(out / "mnist1d-train")
    store = ScoreStore(out / "scores", len(ds), ds.fingerprint, writer=False)
    try:
        return len(ds), store.snapshot().columns()["visits"]
    finally:
        store.close()


def test_readme_has_make_shards_commands() -> None:
    assert len(_make_shards_lines()) >= 3


@pytest.mark.parametrize("argv", _make_shards_lines(), ids=lambda a: " ".join(a[:1]) or "top")
def test_readme_make_shards_line_parses(argv: list[str]) -> None:
    if argv == ["--help"]:
        return
    args = make_shards.build_parser().parse_args(argv)
    assert args.command == argv[0]


def test_readme_training_loop_runs(tmp_path: Path) -> None:
    """Run the README's loop literally, on its own MNIST-1D conversion (fewer samples).

    Nothing is added to the snippet: its model, optimizer and closing of the store are
    the README's own, so a loop that loses reports fails here.
    """
    (argv,) = [a for a in _make_shards_lines() if a[:1] == ["mnist1d"]]
    argv = [("1000" if prev == "--num-samples" else a) for prev, a in zip([""] + argv, argv)]
    subprocess.run([sys.executable, str(REPO / "tools" / "make_shards.py"), *argv, "--no-progress"], check=True, cwd=tmp_path)
    code = _python_block("## Train with it")
    assert "weighted_loss" in code and "StreamingLoader" in code
    script = tmp_path / "readme_loop.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The loop prints one EpochStats per epoch; InfoBatch prunes once scores exist and
    # keeps everything in its annealing epochs at the end.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("EpochStats(")]
    planned = [int(re.search(r"samples_planned=(\d+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    skipped = [int(re.search(r"samples_skipped=(\d+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert len(skipped) == 30, proc.stdout[-2000:]
    assert skipped[0] == 0, "epoch 0 has no scores yet; nothing may be pruned"
    assert max(skipped) > 0, f"InfoBatch pruned nothing in 30 epochs: {skipped}"
    assert skipped[-1] == 0, "the last epoch is an annealing epoch and keeps everything"
    # Every visit the loop trained on reached the store on disk (the last epoch's included).
    _, visits = _stored_visits(tmp_path / "out")
    assert int(visits.sum()) == sum(planned), f"{int(visits.sum())} visits on disk, {sum(planned)} trained"


INTEGRATIONS = "## Lightning, DataLoader, torchdata, Accelerate"
#: Epochs the integration snippets run here instead of the README's 30 (InfoBatch prunes
#: epochs 1-2 of 3: it anneals from epoch 0.875 * 3).
SHORT_EPOCHS = 3


def _python_blocks(heading: str) -> list[str]:
    section = README[README.index(heading) + len(heading) :]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme-integrations")
    (argv,) = [a for a in _make_shards_lines() if a[:1] == ["mnist1d"]]
    argv = [("1000" if prev == "--num-samples" else a) for prev, a in zip([""] + argv, argv)]
    subprocess.run([sys.executable, str(REPO / "tools" / "make_shards.py"), *argv, "--no-progress"], check=True, cwd=root)
    return root


def test_readme_has_integration_snippets() -> None:
    blocks = _python_blocks(INTEGRATIONS)
    assert len(blocks) == 4
    assert [("as_lightning" in b, "as_iterable_dataset" in b, "register_for_checkpointing" in b) for b in blocks] == [
        (True, False, False),
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]


def test_readme_lightning_ddp_snippet_is_the_tested_script() -> None:
    """The DDP snippet (S3 paths, 8 GPUs) is not run here; tests/lightning_ddp_script.py, run on 2
    CPU processes by test_loader_lightning_ddp.py, makes the same calls in the same hooks."""
    block = _python_blocks(INTEGRATIONS)[1]
    script = (Path(__file__).parent / "lightning_ddp_script.py").read_text()
    for call in ("def setup(self, stage", "DistributedScores.open(", "as_lightning(StreamingLoader(", "strategy=\"ddp\"",
                 "PruningCheckpoint(lambda: module.data, lambda: module.store)", "weighted_loss(batch, losses, self.store)",
                 "module.store.close()"):
        assert call in block and call in script, call


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 2, 3], ids=["lightning", "dataloader", "accelerate"])
def test_readme_integration_snippet_prunes(index: int, mnist1d_dir: Path, tmp_path: Path) -> None:
    """Each snippet, after the "Train with it" set-up, trains every epoch and prunes after the first."""
    setup = _python_block("## Train with it")
    setup = setup[: setup.index("for epoch in range(30):")]
    code = setup + _python_blocks(INTEGRATIONS)[index]
    assert code.count("30") == 2, "the set-up's num_epochs and the snippet's epoch count"
    code = code.replace("num_epochs=30", f"num_epochs={SHORT_EPOCHS}")
    code = code.replace("range(30)", f"range({SHORT_EPOCHS})").replace("max_epochs=30", f"max_epochs={SHORT_EPOCHS}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mnist1d-train").symlink_to(mnist1d_dir / "out" / "mnist1d-train", target_is_directory=True)
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, visits = _stored_visits(tmp_path / "out")
    full = n // 100 * 100
    # Epoch 0 trains every sample once; epochs 1-2 skip InfoBatch's pruned part of the
    # well-learned set. Without pruning every sample would have 3 visits.
    assert full < int(visits.sum()) < SHORT_EPOCHS * full, int(visits.sum())
    assert int(visits.max()) == SHORT_EPOCHS and int((visits < SHORT_EPOCHS).sum()) > 0
