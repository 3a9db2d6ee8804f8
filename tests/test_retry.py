"""The retry layer: classification by status code, bounded attempts and time, logging."""

from __future__ import annotations

import logging
import random

import pytest
from botocore.exceptions import ClientError

from shardprune.errors import ConfigError, FetchError
from shardprune.objstore import HTTPStatusError
from shardprune.retry import PERMANENT, THROTTLED, TRANSIENT, RetryPolicy, call_with_retry, classify, status_code


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def _translated(status: int, code: str) -> OSError:
    # What s3fs raises: an OSError whose cause is botocore's ClientError.
    try:
        try:
            raise _client_error(status, code)
        except ClientError as exc:
            raise OSError("the server's message") from exc
    except OSError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_translated(503, "SlowDown"), THROTTLED),
        (_client_error(429, "TooManyRequests"), THROTTLED),
        (_translated(500, "InternalError"), TRANSIENT),
        (HTTPStatusError(502, "bad gateway"), TRANSIENT),
        (_translated(403, "AccessDenied"), PERMANENT),
        (_translated(404, "NoSuchKey"), PERMANENT),
        (ConnectionResetError("reset"), TRANSIENT),
        (TimeoutError(), TRANSIENT),
        (FileNotFoundError("x"), PERMANENT),
        # Message text never decides: a 500 in the text of a status-less error is permanent.
        (OSError("InternalError 500 SlowDown 503"), PERMANENT),
        (ValueError("bad"), PERMANENT),
    ],
)
def test_classify_by_status_code(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_status_code_found_on_the_cause() -> None:
    assert status_code(_translated(503, "SlowDown")) == 503
    assert status_code(OSError("503")) is None


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    p = RetryPolicy(base_s=0.1, max_backoff_s=1.0, throttle_factor=4.0)
    rng = random.Random(0)
    for attempt, (low, high) in enumerate([(0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.8), (0.5, 1.0)]):
        for _ in range(20):
            assert low <= p.backoff(attempt, TRANSIENT, rng) < high
    assert 0.2 <= p.backoff(0, THROTTLED, rng) < 0.4


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_attempts_are_bounded_and_the_error_names_them(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    calls: list[int] = []

    def slow_down() -> bytes:
        calls.append(1)
        raise _translated(503, "SlowDown")

    with caplog.at_level(logging.WARNING, logger="shardprune.storage"):
        with pytest.raises(FetchError, match=r"reading x \[0, 4\) failed after 6 attempt\(s\) in .* s \(throttled"):
            call_with_retry(RetryPolicy(), "reading x [0, 4)", slow_down, clock=clock, sleep=clock.sleep,
                            rng=random.Random(1))
    assert len(calls) == 6 and len(clock.sleeps) == 5
    assert clock.now <= 11.0
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 5 and "HTTP 503" in retries[0].getMessage()


def test_total_time_bounds_attempts() -> None:
    clock = _Clock()
    calls: list[int] = []

    def fail() -> bytes:
        calls.append(1)
        clock.now += 2.0  # each request takes 2 s
        raise ConnectionResetError("reset")

    with pytest.raises(FetchError, match="failed after 3 attempt"):
        call_with_retry(RetryPolicy(attempts=50, total_s=5.0, base_s=0.0), "r", fail, clock=clock, sleep=clock.sleep)
    assert len(calls) == 3


def test_permanent_errors_are_not_retried() -> None:
    calls: list[int] = []

    def denied() -> bytes:
        calls.append(1)
        raise _translated(403, "AccessDenied")

    with pytest.raises(OSError, match="the server's message") as err:
        call_with_retry(RetryPolicy(), "r", denied)
    assert not isinstance(err.value, FetchError) and status_code(err.value) == 403
    with pytest.raises(FileNotFoundError):
        call_with_retry(RetryPolicy(), "r", lambda: open("/nonexistent/x", "rb"))
    assert len(calls) == 1


def test_recovers_and_logs_slow_requests(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    calls: list[int] = []

    def flaky() -> bytes:
        calls.append(1)
        clock.now += 6.0 if len(calls) == 3 else 0.0
        if len(calls) < 3:
            raise _translated(500, "InternalError")
        return b"ok"

    with caplog.at_level(logging.WARNING, logger="shardprune.storage"):
        assert call_with_retry(RetryPolicy(), "r", flaky, clock=clock, sleep=clock.sleep) == b"ok"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("retrying" in m for m in messages) == 2
    assert any("slow request, 6.0 s (attempt 3)" in m for m in messages)


def test_policy_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"total_s=0 must be a finite number > 0"):
        RetryPolicy(total_s=0)
    with pytest.raises(ConfigError, match=r"throttle_factor=0.5 must be a finite number >= 1"):
        RetryPolicy(throttle_factor=0.5)
