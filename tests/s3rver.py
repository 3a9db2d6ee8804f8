"""A real S3-compatible server on 127.0.0.1 for tests: the npm package ``s3rver`` (Node).

moto copies the whole object on every ranged GET (a 4 KiB read of a 256 MiB object costs
about 150 ms), so reads, writes and benchmarks at real shard sizes run against s3rver,
which serves ranges from files without copying. s3rver does not enforce conditional
writes (If-None-Match); tests of those use moto (``tests/s3server.py``). It answers the
one-byte range ``bytes=0-0`` with the whole object (real S3 sends one byte);
:meth:`~shardprune.storage.Storage.read_range` reports that as an ignored Range header.

``tools/dev.sh`` installs s3rver into ``.s3rver/`` at the repository root; if it is
missing, :func:`ensure_installed` installs it there with npm (under a file lock, so
parallel test workers install it once). Use the ``s3rver`` fixture of
``tests/conftest.py``, or :func:`running_s3rver` directly.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from s3server import CREDENTIALS as MOTO_CREDENTIALS
from s3server import S3Server

#: s3rver knows one key pair, S3RVER / S3RVER.
CREDENTIALS = dict(MOTO_CREDENTIALS, AWS_ACCESS_KEY_ID="S3RVER", AWS_SECRET_ACCESS_KEY="S3RVER")

VERSION = "3.7.1"
ROOT = Path(__file__).resolve().parent.parent
PREFIX = Path(os.environ.get("SHARDPRUNE_S3RVER_PREFIX", ROOT / ".s3rver"))
SCRIPT = PREFIX / "node_modules" / "s3rver" / "bin" / "s3rver.js"
_LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


def ensure_installed() -> Path:
    """The path of ``s3rver.js``, installing s3rver with npm first if it is missing.

    Raises:
        RuntimeError: if node or npm is not on PATH, or the install fails.
    """
    if SCRIPT.exists():
        return SCRIPT
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise RuntimeError(
            f"s3rver is not installed at {PREFIX} and node/npm are not on PATH; install Node 20 and run "
            f"`npm install --prefix .s3rver s3rver@{VERSION}` (bash tools/dev.sh test does it)"
        )
    PREFIX.mkdir(parents=True, exist_ok=True)
    with open(PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not SCRIPT.exists():
            done = subprocess.run(
                [npm, "install", "--prefix", str(PREFIX), f"s3rver@{VERSION}", "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if done.returncode != 0 or not SCRIPT.exists():
                raise RuntimeError(f"npm install s3rver@{VERSION} failed ({done.returncode}): {done.stderr[-2000:]}")
    return SCRIPT


@contextmanager
def running_s3rver(bucket: str = "shardprune-test", timeout_s: float = 30.0) -> Iterator[S3Server]:
    """Start s3rver on a free port of 127.0.0.1 with ``bucket``, stop it on exit.

    The data lives in a temporary directory removed on exit. s3rver's key pair is set in
    the standard AWS variables while it runs, and is in ``storage_options``.
    """
    script = ensure_installed()
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    data = tempfile.mkdtemp(prefix="s3rver-")
    # Output to a file, not a pipe: a pipe nobody reads would block the server once full.
    log = open(os.path.join(data, "s3rver.log"), "w+b")
    proc = subprocess.Popen(
        ["node", str(script), "-d", os.path.join(data, "store"), "-a", "127.0.0.1", "-p", "0", "--silent",
         "--allow-mismatched-signatures", "--no-vhost-buckets", "--configure-bucket", bucket],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        port = _wait_for_port(proc, log.name, timeout_s)
        endpoint = f"http://127.0.0.1:{port}"
        options: dict[str, Any] = {
            "key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": endpoint, "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]},
        }
        yield S3Server(endpoint_url=endpoint, bucket=bucket, storage_options=options)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _wait_for_port(proc: "subprocess.Popen[bytes]", log: str, timeout_s: float) -> int:
    """The port s3rver prints once it listens (it prints the line even with --silent)."""
    deadline = time.monotonic() + timeout_s
    seen = b""
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log, "rb") as f:
            seen = f.read()
        found = _LISTENING.search(seen)
        if found:
            return int(found.group(1))
        time.sleep(0.02)
    raise RuntimeError(f"s3rver did not start within {timeout_s} s (exit code {proc.poll()}): {seen[-2000:]!r}")
