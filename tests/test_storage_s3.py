"""Storage on a real S3 server (s3rver on 127.0.0.1): reads and writes on both backends,
concurrent range reads, chained URLs, one client per process, and bounded retries under
faults injected by tests/faultproxy.py."""

from __future__ import annotations

import logging
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from faultproxy import FaultProxy
from shardprune.errors import FetchError
from shardprune.storage import Storage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from shapeproxy import ShapingProxy  # noqa: E402

BACKENDS = ["fsspec", "obstore"]
DATA = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture(scope="module")
def url(s3rver: Any) -> str:
    url = s3rver.url()
    Storage(url, s3rver.storage_options, backend="fsspec").write_bytes_atomic("d/blob.bin", DATA)
    return url


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_write_list(s3rver: Any, backend: str) -> None:
    st = Storage(s3rver.url(), s3rver.storage_options, backend=backend)
    st.write_bytes_atomic("a/b.bin", DATA)
    st.write_bytes_atomic("a/c.json", b"{}")
    assert st.read_range("a/b.bin", 10, 5) == DATA[10:15]
    assert st.read_range("a/b.bin", len(DATA) - 3, 3) == DATA[-3:]
    assert st.read_bytes("a/c.json") == b"{}"
    assert st.size("a/b.bin") == len(DATA)
    assert st.exists("a/b.bin") and not st.exists("a/missing")
    assert st.listdir("a") == ["b.bin", "c.json"]
    with pytest.raises(FileNotFoundError):
        st.read_range("a/missing", 0, 4)
    with pytest.raises(FetchError, match=r"bytes \[16380, 16390\).*shorter"):
        st.read_range("a/b.bin", 16380, 10)
    st.remove("a/c.json")
    assert st.listdir("a") == ["b.bin"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_ranges_in_order_and_concurrent(s3rver: Any, url: str, backend: str) -> None:
    ranges = [("d/blob.bin", 1000 * k, 100 + k) for k in range(16)]
    with ShapingProxy(s3rver.endpoint_url, latency_s=0.2, bandwidth=50e6) as proxy:
        st = Storage(url, s3rver.options_via(proxy.url), backend=backend, max_in_flight=16)
        st.read_range("d/blob.bin", 1, 1)  # connect once, outside the timing
        proxy.reset_counts()
        start = time.monotonic()
        got = st.read_ranges(ranges)
        elapsed = time.monotonic() - start
    assert got == [DATA[o : o + n] for _, o, n in ranges]
    assert proxy.range_gets == 16
    # One at a time would take 16 x 0.2 s; in flight together, a few round trips.
    assert proxy.max_in_flight >= 8, proxy.max_in_flight
    assert elapsed < 1.6, elapsed


def test_one_client_per_process(s3rver: Any, url: str) -> None:
    a = Storage(url, s3rver.storage_options, backend="fsspec")
    b = pickle.loads(pickle.dumps(a))
    assert a.fs is b.fs  # a worker that receives a fresh copy keeps its connections
    assert a.fs.retries == 1  # s3fs's own retry loop is off
    assert a.fs is not Storage(url, s3rver.options_via("http://127.0.0.1:1"), backend="fsspec").fs


def test_chained_url_reads_through_a_local_cache(s3rver: Any, url: str, tmp_path: Path) -> None:
    chained = f"simplecache::{url}"
    opts = {"s3": s3rver.storage_options, "simplecache": {"cache_storage": str(tmp_path)}}
    st = Storage(chained, opts)
    assert not st.is_local and st.protocol == "s3"
    assert st.read_range("d/blob.bin", 5, 10) == DATA[5:15]
    assert st.listdir("d") == ["blob.bin"]
    assert len(list(tmp_path.iterdir())) >= 1  # the object was cached locally


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("status", [503, 500])
def test_persistent_error_is_bounded_and_named(
    s3rver: Any, url: str, backend: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with FaultProxy(s3rver.endpoint_url, fail_all=status) as proxy:
        st = Storage(url, s3rver.options_via(proxy.url), backend=backend)
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="shardprune.storage"):
            with pytest.raises(FetchError) as err:
                st.read_range("d/blob.bin", 100, 50)
        elapsed = time.monotonic() - start
    kind = "throttled" if status == 503 else "transient"
    assert f"reading {url}/d/blob.bin bytes [100, 150) failed after 6 attempt(s)" in str(err.value)
    assert f"({kind};" in str(err.value) and f"HTTP {status}" in str(err.value)
    # Exactly one retry layer: 6 requests for the range, no more (target: at most 8 within 30 s).
    assert [r for _, _, _, r in proxy.injected] == ["bytes=100-149"] * 6
    assert elapsed < 30
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_transient_faults_recover(s3rver: Any, url: str, backend: str) -> None:
    with FaultProxy(s3rver.endpoint_url, faults={1: 503, 2: "drop", 3: 500}) as proxy:
        st = Storage(url, s3rver.options_via(proxy.url), backend=backend)
        assert st.read_range("d/blob.bin", 0, 4096) == DATA[:4096]
    assert proxy.range_reads == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_ranges_of_several_objects_with_a_fault(s3rver: Any, url: str, backend: str) -> None:
    st0 = Storage(url, s3rver.storage_options, backend="fsspec")
    st0.write_bytes_atomic("d/other.bin", DATA[::-1])
    ranges = [("d/blob.bin" if k % 3 else "d/other.bin", 300 * k + 1, 50 + k) for k in range(40)]
    want = [(DATA if rel == "d/blob.bin" else DATA[::-1])[o : o + n] for rel, o, n in ranges]
    with FaultProxy(s3rver.endpoint_url, faults={3: 503, 10: 500}) as proxy:
        st = Storage(url, s3rver.options_via(proxy.url), backend=backend, max_in_flight=32)
        assert st.read_ranges(ranges) == want
    assert len(proxy.injected) == 2
    # Each range read once, plus the retries: a failed obstore batch re-reads its ranges one by one.
    assert 40 + 2 <= proxy.range_reads <= 40 + 2 * 40
