"""A small threaded HTTP proxy on 127.0.0.1 that injects faults in front of a real S3 server.

Clients (s3fs) use the proxy's URL as their endpoint; every request is forwarded to the
upstream server (moto) unchanged, Host header included, so request signing still works.
Only *range reads* (GET with a ``Range`` header: the loader's sample reads) are counted
and can fail; header and manifest reads pass through, so a test decides exactly which
sample reads break. Faults a real server cannot be made to produce on demand:

* ``500`` / ``503``: an S3-style XML error answer instead of the data;
* ``"drop"``: the real answer's status and headers, half of the body, then the
  connection is closed (a connection lost mid-body).

Usage::

    with FaultProxy(upstream_url, faults={2: 500, 5: "drop"}) as proxy:
        opts = {..., "client_kwargs": {"endpoint_url": proxy.url}}

``faults`` maps the 1-based number of a range read to its fault; ``fail_all`` fails every
range read. ``proxy.injected`` lists what was done, as ``(read number, fault, path, Range header)``,
so a test can prove faults happened and count the attempts at one range; ``proxy.ranges``
lists every range read as ``(path, Range header)``, so a test can see which bytes were read.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Fault = int | str  # 500, 503 or "drop"
FAULTS = (500, 503, "drop")
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})


class FaultProxy:
    """Reverse proxy to ``upstream`` that fails chosen range reads.

    Args:
        upstream: ``http://host:port`` of the real server.
        faults: 1-based range-read number -> fault (500, 503 or "drop").
        fail_all: If not None, the fault applied to every range read.
    """

    def __init__(self, upstream: str, faults: dict[int, Fault] | None = None, fail_all: Fault | None = None) -> None:
        for fault in list((faults or {}).values()) + ([] if fail_all is None else [fail_all]):
            if fault not in FAULTS:
                raise ValueError(f"fault {fault!r} is not one of {FAULTS}")
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream={upstream!r} must look like http://127.0.0.1:PORT")
        self.upstream_host: str = parts.hostname
        self.upstream_port: int = parts.port
        self.faults = dict(faults or {})
        self.fail_all = fail_all
        self.range_reads = 0
        self.ranges: list[tuple[str, str]] = []
        self.injected: list[tuple[int, Fault, str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def next_fault(self, method: str, headers: Any, path: str) -> Fault | None:
        """Count a range read and return its fault, if any (thread-safe)."""
        if method != "GET" or headers.get("Range") is None:
            return None
        with self._lock:
            self.range_reads += 1
            self.ranges.append((path, str(headers.get("Range"))))
            n = self.range_reads
            fault = self.fail_all if self.fail_all is not None else self.faults.get(n)
            if fault is not None:
                self.injected.append((n, fault, path, str(headers.get("Range"))))
            return fault

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # Headers and body are separate writes: without TCP_NODELAY each answer waits for the
        # client's delayed ACK (40 ms).
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            fault = proxy.next_fault(self.command, self.headers, self.path)
            if fault in (500, 503):
                self._error(int(fault))
                return
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            if fault == "drop":
                # Promise the whole body, send half, then hang up.
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int) -> None:
            code = "InternalError" if status == 500 else "SlowDown"
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>injected by faultproxy</Message></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler
