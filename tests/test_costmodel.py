"""The cost model measured on a real store: s3rver behind the shaping proxy of benchmarks/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from loader_data import write_dataset
from shardprune.costmodel import REMOTE, CostModel, measure
from shardprune.errors import ConfigError
from shardprune.loader import StreamingLoader
from shardprune.loader.ioplan import summarize
from shardprune.storage import Storage

def test_measure_finds_the_proxy_latency_and_bandwidth(s3rver: Any, shapeproxy: Any) -> None:
    url = s3rver.url()
    Storage(url, s3rver.storage_options).write_bytes_atomic("blob", os.urandom(6 << 20))
    # 60 ms per response and 20 MB/s per connection, far from the defaults (20 ms, 50 MB/s).
    with shapeproxy.ShapingProxy(s3rver.endpoint_url, latency_s=0.06, bandwidth=20e6) as proxy:
        storage = Storage(url, s3rver.options_via(proxy.url))
        model = measure(storage, "blob", 6 << 20, probes=4)
        assert proxy.range_gets == 5  # 4 latency probes, 1 bandwidth probe
    assert 0.055 <= model.latency_s <= 0.3
    # 6 MiB at 20 MB/s is 0.31 s of transfer: the proxy's cap bounds it from above.
    assert 8e6 <= model.bandwidth <= 20e6 * 1.15
    assert model.break_even_gap == int(model.latency_s * model.bandwidth)


class _Clock:
    """A store whose requests take ``latency + n / bandwidth`` seconds of a fake clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, latency: float, bandwidth: float) -> None:
        self.now = 0.0
        self.latency, self.bandwidth = latency, bandwidth
        self.reads: list[tuple[int, int]] = []
        monkeypatch.setattr("shardprune.costmodel.time.perf_counter", lambda: self.now)

    def read_range(self, rel: str, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        self.now += self.latency + length / self.bandwidth
        return bytes(length)


def test_measure_arithmetic_clamps_and_small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock(monkeypatch, latency=0.005, bandwidth=200e6)
    model = measure(clock, "s", 64 << 20)
    assert model.latency_s == pytest.approx(0.005 + 4096 / 200e6)
    assert model.bandwidth == pytest.approx(200e6, rel=1e-3)
    assert clock.reads[-1] == (0, 8 << 20) and len(clock.reads) == 6
    assert len({o for o, _ in clock.reads[:5]}) == 5  # latency probes at spread offsets
    # A file under 1 MiB: the bandwidth keeps the default, the latency is measured.
    small = _Clock(monkeypatch, latency=0.03, bandwidth=1e9)
    model = measure(small, "s", 100_000)
    assert model.bandwidth == REMOTE.bandwidth and len(small.reads) == 5
    assert model.latency_s == pytest.approx(0.03 + 4096 / 1e9)
    # Outside the plausible ranges: clamped.
    fast = _Clock(monkeypatch, latency=0.0, bandwidth=1e13)
    model = measure(fast, "s", 2 << 20)
    assert model.latency_s == 1e-4 and model.bandwidth == 1e10
    with pytest.raises(ConfigError, match="probes=1"):
        measure(fast, "s", 2 << 20, probes=1)
    with pytest.raises(ConfigError, match="size=0"):
        measure(fast, "s", 0)


def test_loader_cost_option(s3rver: Any, tmp_path: Path) -> None:
    url = s3rver.url()
    write_dataset(url, n=120, per_shard=60, storage_options=s3rver.storage_options)
    common: dict[str, Any] = dict(batch_size=10, num_epochs=1, decode=False, storage_options=s3rver.storage_options)
    with StreamingLoader(url, **common) as default:
        assert default.reads.cost == REMOTE
    with StreamingLoader(url, cost="measure", **common) as measured:
        cost = measured.reads.cost
        assert isinstance(cost, CostModel) and cost != REMOTE
        assert 1e-4 <= cost.latency_s < 5.0
        ids = sorted(int(i) for b in measured for i in b["ids"])
    assert ids == list(range(120))
    # A model given by the caller decides the request size: 64 KiB requests for a 1 ms x 1 MB/s store.
    tiny = CostModel(latency_s=1e-3, bandwidth=1e6)
    with StreamingLoader(url, cost=tiny, **common) as given:
        given.set_epoch(0)
        plan = given.read_units()
        assert given.reads.cost is tiny and int(plan.req_length.max()) <= 64 * 1024
        assert summarize(plan).samples == 120
    with pytest.raises(ConfigError, match="cost='fast'"):
        StreamingLoader(url, cost="fast", **common)
    with pytest.raises(ConfigError, match="chained URL"):
        StreamingLoader(f"simplecache::{url}", cost="measure", batch_size=10, num_epochs=1, decode=False,
                        storage_options={"s3": s3rver.storage_options})
    write_dataset(tmp_path / "ds", n=20, per_shard=20)
    with pytest.raises(ConfigError, match="is local"):
        StreamingLoader(tmp_path / "ds", batch_size=5, num_epochs=1, cost="measure")
