"""A loopback HTTP proxy that makes a local S3 server behave like a remote one.

Every response waits ``latency_s`` before its first byte (a round trip to a region) and
its body is sent at most ``bandwidth`` bytes/s per connection (one TCP stream's share),
so a benchmark through it pays what object storage charges: a fixed cost per request
and a rate per connection. It listens on 127.0.0.1 only, forwards only to a 127.0.0.1
upstream, and serves at most ``max_connections`` connections at once (bounded threads).
It counts requests, ranged GETs, bytes sent and the most requests ever in flight.

Usage::

    with ShapingProxy("http://127.0.0.1:4568", latency_s=0.02, bandwidth=50e6) as proxy:
        opts = {..., "client_kwargs": {"endpoint_url": proxy.url}}
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
_CHUNK = 64 * 1024


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a client opening 32 connections at once
    # would see resets that a real endpoint never sends.
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int) -> None:
        super().__init__(addr, handler)
        self._slots = threading.BoundedSemaphore(limit)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class ShapingProxy:
    """Reverse proxy to ``upstream`` adding latency per response and a bandwidth cap per connection.

    Args:
        upstream: ``http://127.0.0.1:PORT`` of the real server (loopback only).
        latency_s: Delay before each response (default 0.02, 0..10).
        bandwidth: Bytes/s per connection (default 50e6, > 0).
        max_connections: Connections served at once (default 512, 1..1024).
    """

    def __init__(self, upstream: str, latency_s: float = 0.02, bandwidth: float = 50e6, max_connections: int = 512) -> None:
        parts = urlsplit(upstream)
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"upstream={upstream!r} must be http://127.0.0.1:PORT (the proxy is loopback only)")
        if not 0 <= latency_s <= 10:
            raise ValueError(f"latency_s={latency_s} must be in [0, 10]")
        if not bandwidth > 0:
            raise ValueError(f"bandwidth={bandwidth} must be > 0 bytes/s")
        if not 1 <= max_connections <= 1024:
            raise ValueError(f"max_connections={max_connections} must be in [1, 1024]")
        self.upstream_port: int = parts.port
        self.latency_s = latency_s
        self.bandwidth = bandwidth
        self.requests = 0
        self.range_gets = 0
        self.bytes_sent = 0
        self.in_flight = 0
        self.max_in_flight = 0
        #: ``time.monotonic()`` when each ranged GET arrived (CLOCK_MONOTONIC: comparable across processes).
        self.arrivals: list[float] = []
        self._lock = threading.Lock()
        self._server = _BoundedServer(("127.0.0.1", 0), _make_handler(self), max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, name="shapeproxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.range_gets = self.bytes_sent = self.max_in_flight = 0
            self.arrivals = []

    def _enter(self, ranged: bool) -> None:
        with self._lock:
            if ranged:
                self.arrivals.append(time.monotonic())
            self.requests += 1
            self.range_gets += int(ranged)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self, nbytes: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.bytes_sent += nbytes

    def __enter__(self) -> "ShapingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _make_handler(proxy: ShapingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in separate writes: with Nagle's algorithm on, the body
        # waits for the client's delayed ACK of the headers (40 ms on Linux), a cost no
        # object store charges. TCP_NODELAY, as real HTTP servers set it.
        disable_nagle_algorithm = True
        # An idle kept-alive connection is closed after this long, so clients that never
        # close theirs cannot hold every thread of the bounded server.
        timeout = 30
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            pass

        def _upstream(self) -> http.client.HTTPConnection:
            # One upstream connection per client connection, kept alive like the client's.
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
            return self.upstream

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            proxy._enter(self.command == "GET" and self.headers.get("Range") is not None)
            sent = 0
            try:
                started = time.monotonic()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                for attempt in (0, 1):
                    conn = self._upstream()
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (http.client.HTTPException, OSError):
                        # The server closed an idle kept-alive connection (Node does after 5 s):
                        # reconnect once, as a client of a real endpoint would never see this.
                        conn.close()
                        self.upstream = None
                        if attempt:
                            raise
                wait = proxy.latency_s - (time.monotonic() - started)
                if wait > 0:
                    time.sleep(wait)
                self.send_response(resp.status, resp.reason)
                head = self.command == "HEAD"  # a HEAD's Content-Length is the object's size: keep it
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP_BY_HOP and (head or k.lower() != "content-length"):
                        self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                t0 = time.monotonic()
                for start in range(0, len(data), _CHUNK):
                    piece = data[start : start + _CHUNK]
                    self.wfile.write(piece)
                    sent += len(piece)
                    ahead = sent / proxy.bandwidth - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                self.close_connection = True
            finally:
                proxy._leave(sent)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    return Handler


def _serve(upstream: str, latency_s: float, bandwidth: float, control: Any) -> None:
    with ShapingProxy(upstream, latency_s, bandwidth) as proxy:
        control.send(proxy.url)
        while True:
            command = control.recv()
            if command == "stop":
                return
            if command == "reset":
                proxy.reset_counts()
            control.send(
                {"requests": proxy.requests, "range_gets": proxy.range_gets, "bytes_sent": proxy.bytes_sent,
                 "max_in_flight": proxy.max_in_flight}
            )


class ShapingProxyProcess:
    """A :class:`ShapingProxy` in its own process, so that its threads do not share the
    benchmark's interpreter lock (a proxy in the reader's process slows the reader down).

    Args: as :class:`ShapingProxy`. ``counts()`` returns its counters; ``reset_counts()`` zeroes them.
    """

    def __init__(self, upstream: str, latency_s: float = 0.02, bandwidth: float = 50e6) -> None:
        ctx = mp.get_context("spawn")
        self._control, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(upstream, latency_s, bandwidth, child), daemon=True)
        self.url = ""

    def __enter__(self) -> "ShapingProxyProcess":
        self._process.start()
        if not self._control.poll(60):
            raise RuntimeError("the shaping proxy process did not start within 60 s")
        self.url = self._control.recv()
        return self

    @property
    def pid(self) -> int | None:
        """The proxy process's PID (for CPU accounting)."""
        return self._process.pid

    def counts(self) -> dict[str, int]:
        self._control.send("counts")
        counts: dict[str, int] = self._control.recv()
        return counts

    def reset_counts(self) -> None:
        self._control.send("reset")
        self._control.recv()

    def __exit__(self, *exc: object) -> None:
        self._control.send("stop")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
