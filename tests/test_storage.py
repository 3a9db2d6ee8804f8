"""Storage: byte ranges, atomic writes, retries, fork safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle

import pytest

from shardprune.errors import ConfigError, FetchError
from shardprune.retry import RetryPolicy
from shardprune.storage import Storage, open_storage


def test_read_range_local(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path)
    st.write_bytes_atomic("a/b.bin", bytes(range(256)) * 4)
    assert st.read_range("a/b.bin", 10, 5) == bytes(range(10, 15))
    assert st.read_range("a/b.bin", 1020, 4) == bytes(range(252, 256))
    assert st.size("a/b.bin") == 1024
    assert st.exists("a/b.bin") and not st.exists("a/c.bin")
    assert st.listdir("a") == ["b.bin"]


def test_read_past_end_is_an_error(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path)
    st.write_bytes_atomic("f", b"12345")
    with pytest.raises(FetchError, match=r"bytes \[3, 13\).*shorter"):
        st.read_range("f", 3, 10)


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path)
    st.write_bytes_atomic("x.json", b"old")
    st.write_bytes_atomic("x.json", b"new")
    assert st.read_bytes("x.json") == b"new"
    assert os.listdir(tmp_path) == ["x.json"]


def test_bad_arguments_name_value_and_range(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ConfigError, match=r"attempts=0 must be an int in \[1, 100\]"):
        Storage(tmp_path, retry=RetryPolicy(attempts=0))
    with pytest.raises(ConfigError, match=r"max_in_flight=0 must be an int in \[1, 256\]"):
        Storage(tmp_path, max_in_flight=0)
    with pytest.raises(ConfigError, match=r"backend='boto'"):
        Storage(tmp_path, backend="boto")
    with pytest.raises(ConfigError, match="empty"):
        Storage("")


def test_transient_errors_are_retried_then_reported(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path, retry=RetryPolicy(attempts=3, base_s=0.0))
    calls: list[int] = []

    def flaky() -> bytes:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("peer reset")
        return b"ok"

    assert st._retry("reading x", flaky) == b"ok"
    assert len(calls) == 3

    def always() -> bytes:
        raise ConnectionResetError("peer reset")

    with pytest.raises(FetchError, match="reading x failed after 3 attempt"):
        st._retry("reading x", always)


def test_permanent_errors_are_not_retried(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path, retry=RetryPolicy(attempts=5, base_s=0.0))
    with pytest.raises(FileNotFoundError):
        st.read_range("missing", 0, 1)


def test_pickle_carries_no_handles(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path)
    st.write_bytes_atomic("f", b"abc")
    st.read_range("f", 0, 1)
    clone = pickle.loads(pickle.dumps(st))
    assert clone._fds == {} and clone.url == st.url
    assert clone.read_range("f", 1, 2) == b"bc"


def _child_read(st: Storage, q: "mp.Queue[bytes]") -> None:
    q.put(st.read_range("f", 0, 3))


def test_forked_child_opens_its_own_descriptors(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path)
    st.write_bytes_atomic("f", b"abcdef")
    assert st.read_range("f", 0, 3) == b"abc"
    ctx = mp.get_context("fork")
    q: "mp.Queue[bytes]" = ctx.Queue()
    p = ctx.Process(target=_child_read, args=(st, q))
    p.start()
    assert q.get(timeout=30) == b"abc"
    p.join(timeout=30)
    assert p.exitcode == 0


def test_open_storage_passes_storage_through(tmp_path: os.PathLike[str]) -> None:
    st = Storage(tmp_path)
    assert open_storage(st) is st
    assert open_storage(f"file://{tmp_path}").url == st.url
