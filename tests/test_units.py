"""Pure logic of the daemon: budget windows, refill planning, backoffs and the reading of Agora's answers."""

from __future__ import annotations

import io
import json
import random

import httpx
import pytest
import structlog
from ridpool.daemon import log as daemon_log
from ridpool.daemon.agora import (
    ATTEMPTS,
    AcquireClient,
    Malformed,
    Overloaded,
    RateLimited,
    Rejected,
    Transient,
    classify,
)
from ridpool.daemon.config import Credentials
from ridpool.daemon.limiter import cooldown_for, window_for
from ridpool.daemon.planner import hold_for

HOST = "https://api.sd-rtn.com"


@pytest.mark.parametrize(
    ("rate", "limit", "window_ms"),
    [(10, 10, 1050), (8, 8, 1050), (8.7, 8, 1050), (1, 1, 1050), (0.5, 1, 2000), (0.1, 1, 10000), (50, 50, 1050)],
)
def test_the_budget_window_keeps_every_second_at_agora_within_the_rate(rate: float, limit: int, window_ms: int) -> None:
    """floor(rate) grants per second plus the network margin; below 1/s, one grant per 1/rate seconds."""
    window = window_for(rate)
    assert (window.limit, window.window_ms) == (limit, window_ms)
    assert window.limit <= max(1, rate)


def test_ten_per_second_configured_sustains_more_than_nine() -> None:
    """The margin against bunching costs 5%: 10/s configured still sustains the 9/s the product promises."""
    assert 9 < window_for(10).sustained < 10


@pytest.mark.parametrize("rate", [0, -1, float("nan"), float("inf")])
def test_a_nonsense_rate_is_refused(rate: float) -> None:
    """A rate that is not a positive finite number never reaches Redis."""
    with pytest.raises(ValueError, match="rate"):
        window_for(rate)


@pytest.mark.parametrize(("n", "seconds"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (9, 16.0)])
def test_repeated_429s_double_the_shared_cooldown_up_to_a_cap(n: int, seconds: float) -> None:
    """Each 429 in a row doubles every replica's wait, capped at 16 s."""
    assert cooldown_for(n) == seconds


@pytest.mark.parametrize(("n", "seconds"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 20.0), (50, 20.0)])
def test_a_failing_pool_is_held_longer_each_time_but_tried_a_few_times_a_minute(n: int, seconds: float) -> None:
    """A rejected request (wrong secret) is retried at most every 20 s: Agora is never hammered."""
    assert hold_for(n) == seconds


def _response(status: int, body: object = None, text: str | None = None) -> httpx.Response:
    content = text if text is not None else json.dumps(body)
    return httpx.Response(status, content=content.encode(), headers={"X-Request-Id": "req-42"})


@pytest.mark.parametrize(
    ("status", "body", "text", "outcome"),
    [
        (200, {"cname": "c", "uid": "1", "resourceId": "abc"}, None, "abc"),
        (200, {"resourceId": "abc"}, None, "abc"),  # older responses carry only resourceId
        (200, {"resourceId": ""}, None, Malformed),
        (200, {"resourceId": 12}, None, Malformed),
        (200, {"resourceId": None}, None, Malformed),
        (200, {"cname": "c"}, None, Malformed),
        (200, ["abc"], None, Malformed),
        (200, None, "<html>", Malformed),
        (200, None, "", Malformed),
        (429, {"message": "API rate limit exceeded"}, None, RateLimited),
        (500, {"code": 500, "reason": "internal_error"}, None, Transient),
        (504, {"code": 504, "reason": "allocate_timeout"}, None, Transient),
        (502, None, "bad gateway", Transient),
        (400, {"code": 406, "reason": "vendor_over_load"}, None, Overloaded),
        (400, {"code": 2, "reason": "invalid uid"}, None, Rejected),
        (400, {"code": 401, "reason": "invalid_channel_name"}, None, Rejected),
        (401, {"message": "Invalid authentication credentials"}, None, Rejected),
        (404, {"message": "no Route matched with those values"}, None, Rejected),
    ],
)
def test_only_a_200_with_a_non_empty_string_resource_id_is_an_id(
    status: int, body: object, text: str | None, outcome: object
) -> None:
    """Every other answer is an error of the right kind, carrying Agora's X-Request-Id."""
    result = classify(_response(status, body, text), HOST)
    if isinstance(outcome, str):
        assert result == outcome
    else:
        assert isinstance(result, outcome)  # type: ignore[arg-type]
        assert result.request_id == "req-42" and str(status) in str(result)


async def _no_wait() -> None:
    return None


async def _ignore(_exc: RateLimited) -> None:
    return None


async def _instant(_seconds: float) -> None:
    return None


def _client(handler: httpx.MockTransport, hosts: list[str]) -> AcquireClient:
    secret = Credentials(customer_id="cust", customer_secret="s3cret")  # type: ignore[arg-type]
    return AcquireClient(httpx.AsyncClient(transport=handler), hosts, secret, sleep=_instant, rng=random.Random(1))


async def test_5xx_is_retried_on_the_same_host_then_the_next() -> None:
    """Agora's advice: the same host first, then the alternate domain; an ID on the last try is returned."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if len(seen) < ATTEMPTS:
            return _response(503, {"code": 500, "reason": "internal_error"})
        return _response(200, {"resourceId": "rid-1"})

    client = _client(httpx.MockTransport(handle), ["https://a.example", "https://b.example"])
    got = await client.acquire("0" * 32, "c", "1", {}, before_attempt=_no_wait, on_rate_limited=_ignore)
    assert got.resource_id == "rid-1" and seen == ["a.example", "a.example", "b.example", "b.example"]


async def test_a_network_error_moves_to_the_next_host_at_once() -> None:
    """A connection failure (not a 5xx) skips straight to the other host."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "a.example":
            raise httpx.ConnectError("refused", request=request)
        return _response(200, {"resourceId": "rid-2"})

    client = _client(httpx.MockTransport(handle), ["https://a.example", "https://b.example"])
    got = await client.acquire("0" * 32, "c", "1", {}, before_attempt=_no_wait, on_rate_limited=_ignore)
    assert got.resource_id == "rid-2" and seen == ["a.example", "b.example"]


async def test_a_rejected_request_is_not_retried_and_every_attempt_draws_from_the_budget() -> None:
    """A 401 is tried once; the budget is drawn before each HTTP attempt, retries included."""
    calls: list[str] = []
    draws: list[int] = []

    async def draw() -> None:
        draws.append(1)

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        return _response(401, {"message": "Invalid authentication credentials"})

    client = _client(httpx.MockTransport(handle), [HOST])
    with pytest.raises(Rejected, match="Invalid authentication credentials") as info:
        await client.acquire("0" * 32, "c", "1", {}, before_attempt=draw, on_rate_limited=_ignore)
    assert len(calls) == 1 and len(draws) == 1
    assert "s3cret" not in str(info.value)


async def test_a_429_is_reported_and_retried_within_the_attempts() -> None:
    """A 429 calls the shared slow-down hook and counts as an attempt; a later 200 succeeds."""
    answers = iter([_response(429, {"message": "API rate limit exceeded"}), _response(200, {"resourceId": "x"})])
    limited: list[RateLimited] = []

    async def on_429(exc: RateLimited) -> None:
        limited.append(exc)

    client = _client(httpx.MockTransport(lambda _r: next(answers)), [HOST])
    got = await client.acquire("0" * 32, "c", "1", {}, before_attempt=_no_wait, on_rate_limited=on_429)
    assert got.resource_id == "x" and len(limited) == 1 and limited[0].request_id == "req-42"


def test_the_log_scrubber_removes_the_secret_from_every_event() -> None:
    """Even an event that carries the secret by mistake is written without it."""
    out = io.StringIO()
    daemon_log.configure(secrets=["hunter2-secret"], json=True, stream=out)
    try:
        structlog.get_logger("t").error("oops", detail="auth hunter2-secret failed", err=ValueError("hunter2-secret"))
    finally:
        structlog.reset_defaults()
    line = out.getvalue()
    assert "hunter2-secret" not in line and daemon_log.REDACTED in line
    assert json.loads(line)["event"] == "oops"
