"""A published dataset is readable by whoever can read its shards: modes follow the umask.

Seen failing on ac615b0: ``manifest.arrow`` and ``shardprune.json`` were 0600 (the atomic
write's ``mkstemp``) while the shards were 0644, so another account got ``PermissionError``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shardprune.format.header import HEADER_NAME, MANIFEST_NAME
from shardprune.format.tarindex import index_tars
from shardprune.format.writer import DatasetWriter
from shardprune.sources.base import ArraySource
from shardprune.storage import Storage, current_umask

@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(out: Path) -> None:
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    DatasetWriter(out, max_samples=5).write(ArraySource(x, np.arange(10) % 2))


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_header_and_manifest_modes_follow_the_umask_like_the_shards(
    tmp_path: Path, umask: None, mask: int, expected: int
) -> None:
    os.umask(mask)
    assert current_umask() == mask
    _write(tmp_path / "ds")
    for name in (HEADER_NAME, MANIFEST_NAME, "shards/000000.tar", "shards/000001.tar"):
        assert _mode(tmp_path / "ds" / name) == expected, name


def test_index_writes_readable_files(tmp_path: Path, umask: None) -> None:
    _write(tmp_path / "ds")
    for name in (HEADER_NAME, MANIFEST_NAME):
        (tmp_path / "ds" / name).unlink()
    index_tars(tmp_path / "ds")
    assert _mode(tmp_path / "ds" / HEADER_NAME) == _mode(tmp_path / "ds" / MANIFEST_NAME) == 0o644


def test_atomic_write_replaces_content_with_umask_mode(tmp_path: Path, umask: None) -> None:
    st = Storage(tmp_path)
    st.write_bytes_atomic("a/b.json", b"one")
    os.umask(0o007)
    st.write_bytes_atomic("a/b.json", b"two")
    assert (tmp_path / "a" / "b.json").read_bytes() == b"two"
    assert _mode(tmp_path / "a" / "b.json") == 0o660
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching accounts needs root")
def test_another_account_reads_every_file_of_the_dataset(umask: None) -> None:
    # A real second account (nobody) reads the files with cat: the interpreter lives under
    # /root, which that account cannot enter, and a read of the bytes is what open_dataset needs.
    root = Path(tempfile.mkdtemp(prefix="shardprune-perm-"))
    try:
        root.chmod(0o755)
        _write(root / "ds")
        names = [HEADER_NAME, MANIFEST_NAME, "shards/000000.tar"]
        out = subprocess.run(
            ["cat", *names], cwd=root / "ds", user=65534, group=65534, capture_output=True, timeout=60
        )
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout == b"".join((root / "ds" / n).read_bytes() for n in names)
    finally:
        shutil.rmtree(root, ignore_errors=True)
