"""The one retry layer of storage requests: bounded attempts and time, backoff with jitter.

Rules:

1. A failure is classified by its HTTP status code where one exists (found on the
   exception or its causes: botocore's ``response["ResponseMetadata"]["HTTPStatusCode"]``,
   or a ``status`` / ``status_code`` attribute), never by message text:
   503 and 429 are *throttling*, 500, 502, 504 and 408 are *transient*, any other status is
   *permanent*. Without a status, connection resets, timeouts and truncated bodies are
   transient; everything else (missing file, permission, bad argument) is permanent.
2. A permanent failure is raised at once, unchanged (``FileNotFoundError``,
   ``PermissionError``, a client's missing-credentials error...), so callers and the
   tools' error messages see what the client said.
3. Attempt ``k`` (0-based) that failed transiently waits ``min(max_backoff_s, base_s * 2**k)``
   times a uniform jitter in [0.5, 1); throttling starts ``throttle_factor`` times higher,
   so a server that asks for less load gets it.
4. No attempt starts after ``attempts`` attempts or once the next wait would end past
   ``total_s`` seconds from the first attempt; the last failure becomes a ``FetchError``
   naming what was read (object and byte range), the attempts and the time spent.
5. Every retry, and every request slower than ``slow_s``, is logged on the
   ``shardprune.storage`` logger (warning level).

Clients below this layer (s3fs, botocore, obstore) are configured with their own retries
off (see :mod:`shardprune.storage`), so one request attempt here is one HTTP request.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from shardprune.errors import FetchError
from shardprune.validate import check_float, check_int

T = TypeVar("T")

log = logging.getLogger("shardprune.storage")

THROTTLED = "throttled"
TRANSIENT = "transient"
PERMANENT = "permanent"

_THROTTLE_STATUS = frozenset({429, 503})
_TRANSIENT_STATUS = frozenset({408, 500, 502, 504})
#: Connection-level failures (no HTTP status) as aiohttp, botocore, urllib3 and obstore name them.
_TRANSIENT_NAMES = frozenset(
    {
        "ClientConnectionError",
        "ClientOSError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "IncompleteReadError",
        "ResponseStreamingError",
        "ProtocolError",
    }
)
_TRANSIENT_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE})


def status_code(exc: BaseException) -> int | None:
    """The HTTP status carried by ``exc`` or one of its causes, if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 8:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
        for attr in ("status", "status_code"):
            code = getattr(cur, attr, None)
            if isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599:
                return code
        cur = cur.__cause__ or cur.__context__
    return None


def classify(exc: BaseException) -> str:
    """:data:`THROTTLED`, :data:`TRANSIENT` or :data:`PERMANENT` (rule 1 of the module)."""
    code = status_code(exc)
    if code is not None:
        if code in _THROTTLE_STATUS:
            return THROTTLED
        return TRANSIENT if code in _TRANSIENT_STATUS else PERMANENT
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 8:
        seen.add(id(cur))
        if isinstance(cur, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return PERMANENT
        if isinstance(cur, (ConnectionError, TimeoutError)) or type(cur).__name__ in _TRANSIENT_NAMES:
            return TRANSIENT
        if isinstance(cur, OSError) and cur.errno in _TRANSIENT_ERRNOS:
            return TRANSIENT
        cur = cur.__cause__ or cur.__context__
    return PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a storage request is retried (see the module's rules).

    Args:
        attempts: Requests at most per operation, the first included (default 6, 1..100).
        total_s: No retry starts past this many seconds after the first attempt
            (default 25, > 0).
        base_s: First backoff in seconds (default 0.1, >= 0); doubles per attempt.
        max_backoff_s: Longest single backoff (default 5, >= 0).
        throttle_factor: Backoff multiplier for throttling (503 SlowDown, 429; default 4, >= 1).
        slow_s: A request slower than this is logged (default 5 s, > 0).

    With the defaults a persistent 503 makes 6 requests and gives up after at most
    0.4 + 0.8 + 1.6 + 3.2 + 5 = 11 s of backoff plus the requests' own time.
    """

    attempts: int = 6
    total_s: float = 25.0
    base_s: float = 0.1
    max_backoff_s: float = 5.0
    throttle_factor: float = 4.0
    slow_s: float = 5.0

    def __post_init__(self) -> None:
        check_int("attempts", self.attempts, 1, 100, fix="pass e.g. attempts=6")
        check_float("total_s", self.total_s, 0, low_open=True, fix="pass e.g. total_s=25")
        check_float("base_s", self.base_s, 0)
        check_float("max_backoff_s", self.max_backoff_s, 0)
        check_float("throttle_factor", self.throttle_factor, 1)
        check_float("slow_s", self.slow_s, 0, low_open=True)

    def backoff(self, attempt: int, kind: str, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based) of the given kind."""
        base = self.base_s * (self.throttle_factor if kind == THROTTLED else 1.0)
        return min(self.max_backoff_s, base * 2.0**attempt) * (0.5 + 0.5 * rng.random())


def call_with_retry(
    policy: RetryPolicy,
    what: str,
    fn: Callable[[], T],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``fn`` under ``policy``; ``what`` names the object and range in messages.

    Raises:
        FetchError: once a transient failure has exhausted the attempts or the time.
        Exception: a permanent failure, at once and unchanged.
    """
    rng = rng or random.Random()
    first = clock()
    attempt = 0
    while True:
        started = clock()
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            kind = classify(exc)
            attempt += 1
            elapsed = clock() - first
            code = status_code(exc)
            reason = f"{type(exc).__name__}{'' if code is None else f' (HTTP {code})'}: {exc}"
            if kind == PERMANENT:
                raise
            wait = policy.backoff(attempt - 1, kind, rng)
            if attempt >= policy.attempts or elapsed + wait > policy.total_s:
                raise FetchError(
                    f"{what} failed after {attempt} attempt(s) in {elapsed:.1f} s ({kind}; limits: "
                    f"{policy.attempts} attempts, {policy.total_s:g} s): {reason}"
                ) from exc
            log.warning("%s: attempt %d/%d %s (%s); retrying in %.2f s", what, attempt, policy.attempts, kind,
                        reason, wait)
            sleep(wait)
            continue
        took = clock() - started
        if took > policy.slow_s:
            log.warning("%s: slow request, %.1f s (attempt %d)", what, took, attempt + 1)
        return result
