"""Shared test fixtures (generic only)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from s3server import S3Server, running_s3_server  # noqa: E402


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server (moto) on 127.0.0.1 with an empty bucket.

    Use ``s3_server.url()`` for a fresh ``s3://bucket/prefix`` and
    ``s3_server.storage_options`` for s3fs.
    """
    with running_s3_server() as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from slow_tests import mark_slow

    mark_slow(items)


@pytest.fixture(scope="session")
def s3rver() -> Iterator[S3Server]:
    """A real S3-compatible server (npm s3rver) on 127.0.0.1 with an empty bucket.

    Serves ranged GETs without copying the object (unlike moto), so S3 reads, writes and
    benchmarks run against it; it does not enforce If-None-Match (use ``s3_server``).
    """
    from s3rver import running_s3rver

    with running_s3rver() as server:
        yield server


@pytest.fixture(scope="session")
def shapeproxy() -> ModuleType:
    """``benchmarks/shapeproxy.py`` as a module: the loopback proxy that adds a delay per
    response and a bandwidth cap per connection (``shapeproxy.ShapingProxy``), and stamps
    each ranged GET's arrival."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "shapeproxy.py"
    spec = importlib.util.spec_from_file_location("shapeproxy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
