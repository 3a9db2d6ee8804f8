"""The README's "Your data as it is" and "Ways in" code runs as written (on small generated data)."""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from shardprune.convert import convert_builtin
from shardprune.format.writer import DatasetWriter
from shardprune.format.permute import input_permutation

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _blocks(heading: str) -> list[str]:
    start = README.index(heading)
    end = re.compile(r"\n##+ ").search(README, start + len(heading))
    section = README[start : end.start() if end else None]
    return [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", section, re.S)]


def _image(fmt: str, v: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), v, dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _run(code: str, env: dict[str, Any]) -> dict[str, Any]:
    exec(compile(code, "README.md", "exec"), env)  # noqa: S102 - the README's own code
    return env


def test_fields_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with DatasetWriter("out/mixed").samples() as sink:
        for i in range(10):
            sample: dict[str, Any] = {"bmp" if i % 3 else "png": _image("BMP" if i % 3 else "PNG", i)}
            if i % 4 == 0:
                sample["txt"] = f"caption {i}"
            sink.write(sample)
    (code,) = _blocks("### Fields that some samples lack")
    env = _run(code, {})
    assert env["images"].dtype == torch.uint8 and env["images"].shape[1:] == (3, 4, 4)
    assert all(c is None or c.startswith("caption") for c in env["captions"])


def test_metadata_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 16)).astype(np.float32), rng.integers(0, 10, 200)
    (code,) = _blocks("### Metadata columns and filters")
    env = _run(code, {"x": x, "y": y})
    loader = env["loader"]
    loader.set_epoch(0)
    ids = [int(i) for b in loader for i in b["ids"]]
    # The converter wrote input row perm[j] as sample j (its default shuffle); the snippet's
    # "source" column is computed from the written id.
    perm = input_permutation(200, 0)
    expected = {j for j in range(200) if np.abs(x[perm[j]]).max() >= 1.5 and j % 4 and y[perm[j]] < 8}
    assert set(ids) <= expected and len(ids) == len(expected) // 64 * 64


def test_batches_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    from shardprune import StreamingLoader, make_policy, weighted_loss
    from shardprune.models import MNIST1DCNN

    convert_builtin("mnist1d", "out/mnist1d-train", num_samples=600, shard_format="zarr")
    convert_builtin("mnist1d", "out/mnist1d-test", num_samples=600, split="test", shard_format="zarr")
    loader = StreamingLoader(
        "out/mnist1d-train", batch_size=32, policy=make_policy("swdpp", mixup_prob=0.5), num_epochs=1
    )
    loader.set_epoch(0)
    batch = next(iter(loader))
    assert "target" in batch
    target, evaluation = _blocks("### Batches, evaluation")
    model = MNIST1DCNN()
    env = _run(target, {"model": model, "batch": batch, "store": None, "weighted_loss": weighted_loss,
                        "F": torch.nn.functional})
    assert env["y"] is batch["target"] and env["loss"].ndim == 0
    env = _run(evaluation, {"model": model, "StreamingLoader": StreamingLoader})
    assert 0 <= env["correct"] <= 120
    assert sum(len(b["ids"]) for b in env["test_loader"]) == 120


def test_ways_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    from sklearn.datasets import load_digits

    from shardprune import ScoreStore, open_dataset, weighted_loss

    writer_code, mapstyle_code = _blocks("## Ways in")
    _run(writer_code, {"np": np})
    ds = open_dataset("out/mine")
    assert len(ds) == 100 and ds.manifest.metadata["quality"].to_pylist()[:2] == [0.0, 0.01]
    xs, ys = load_digits(return_X_y=True)
    my_dataset = [(torch.tensor(x, dtype=torch.float32) / 16, int(t)) for x, t in zip(xs[:300], ys[:300])]
    store = ScoreStore("scores", len(my_dataset), "digits-300", flush_interval_s=None)
    model = torch.nn.Linear(64, 10)
    env = {"my_dataset": my_dataset, "store": store, "model": model, "weighted_loss": weighted_loss,
           "F": torch.nn.functional, "opt": torch.optim.SGD(model.parameters(), lr=0.1)}
    _run(mapstyle_code.replace("30", "3"), env)
    store.flush()
    assert int((store.snapshot().visits > 0).sum()) == 300
    store.close()


def test_every_algorithms_pointer_resolves_in_the_repository() -> None:
    # Seen failing on ac615b0: docstrings pointed to an ALGORITHMS.md the repository did not have.
    repo = Path(__file__).resolve().parent.parent
    pointers = {
        m.group(0)
        for path in (repo / "shardprune").rglob("*.py")
        for m in re.finditer(r"[\w/]*ALGORITHMS\.md", path.read_text())
    }
    assert pointers == {"docs/ALGORITHMS.md"}
    assert "## InfoBatch" in (repo / "docs" / "ALGORITHMS.md").read_text()


def test_every_shardprune_convert_line_parses() -> None:
    import shlex

    from shardprune.convert_cli import build_parser

    lines = [ln.strip() for ln in README.splitlines() if ln.strip().startswith("shardprune convert ")]
    assert len(lines) >= 3
    for line in lines:
        argv = shlex.split(line)[2:]
        if argv == ["--help"]:
            continue
        assert build_parser("shardprune convert").parse_args(argv).command == argv[0], line
