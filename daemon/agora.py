"""The Agora `acquire` client: one call, its retries, its host failover and the reading of every answer.

Only a 200 whose body holds a non-empty string `resourceId` is an ID; everything else is an outcome with the
X-Request-Id Agora support asks for. Every HTTP attempt draws from the shared budget first (`before_attempt`),
because Agora counts attempts, not calls, and is reported afterwards (`after_attempt`): the caller, who knows
the pool, counts and logs it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
from ridpool.daemon.config import Credentials, PoolConfig
from ridpool.entry import Entry
from ridpool.errors import AcquireFailed
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

# Agora's advice: back off 1 s, 3 s, 6 s between attempts on 5xx, timeouts and network errors.
BACKOFF = (1.0, 3.0, 6.0)
ATTEMPTS = len(BACKOFF) + 1


class AcquireError(AcquireFailed):
    """An acquire that produced no ID. `retryable` False: the request itself is wrong (the pool's state becomes
    `error` and the failure is logged as an error); True: Agora may answer another time (state `retrying`)."""

    kind = "error"
    retryable = True

    def __init__(self, message: str, *, status: int | None = None, request_id: str = "", host: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        self.host = host


class Transient(AcquireError):
    """5xx, timeout, network error or malformed 200: worth another attempt after a backoff."""

    kind = "transient"


class Malformed(Transient):
    """A 200 without a usable resourceId: counted and logged, never stored."""

    kind = "malformed"


class RateLimited(AcquireError):
    """429: the account is over its rate; every replica must slow down."""

    kind = "rate_limited"


class Overloaded(AcquireError):
    """400 code 406 vendor_over_load: Agora asks to retry later; the pool is held for a while."""

    kind = "overloaded"


class Rejected(AcquireError):
    """4xx other than 429 and 406: the request itself is wrong (credentials, appid, channel). Not retried."""

    kind = "rejected"
    retryable = False


# Every kind an attempt can fail with: the `kind` label of ridpool_agora_errors_total, zero until one happens.
KINDS = tuple(kind.kind for kind in (Transient, Malformed, RateLimited, Overloaded, Rejected))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt as `after_attempt` hears of it: where, how long from sending to the answer, what failed."""

    host: str
    seconds: float
    error: AcquireError | None  # None: it brought an ID


@dataclass(frozen=True, slots=True)
class Acquired:
    resource_id: str
    request_id: str
    sent_at: float  # monotonic time the successful attempt was sent
    host: str

    def entry(self, pool: PoolConfig, cname: str, uid: str, sent_ms: int) -> Entry:
        """What this ID is as a pool entry: offered until the pool's max_age after its request was sent (`sent_ms`,
        server time)."""
        return Entry(
            resource_id=self.resource_id,
            appid=pool.appid,
            cname=cname,
            uid=uid,
            pool=pool.name,
            sent_at_ms=sent_ms,
            expires_at_ms=sent_ms + pool.max_age_ms,
            request_id=self.request_id,
        )


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or "(empty body)"
    if isinstance(body, dict):
        if "code" in body or "reason" in body:
            return f"code {body.get('code')} {body.get('reason', '')}".strip()
        if "message" in body:
            return str(body["message"])
    return json.dumps(body)[:200]


def classify(response: httpx.Response, host: str) -> str | AcquireError:
    """The resourceId of a good answer, or the error that answer is (pure: table-tested)."""
    request_id = response.headers.get("x-request-id", "")
    status = response.status_code

    def error(kind: type[AcquireError], what: str) -> AcquireError:
        return kind(f"HTTP {status} from {host}: {what}", status=status, request_id=request_id, host=host)

    if status == 200:
        try:
            body = response.json()
        except ValueError:
            return error(Malformed, "body is not JSON")
        rid = body.get("resourceId") if isinstance(body, dict) else None
        if not isinstance(rid, str) or not rid:
            return error(Malformed, "no non-empty string resourceId in the body")
        return rid
    if status == 429:
        return error(RateLimited, _reason(response))
    if status >= 500:
        return error(Transient, _reason(response))
    if status == 400:
        try:
            code = response.json().get("code")
        except (ValueError, AttributeError):
            code = None
        if code == 406:
            return error(Overloaded, _reason(response))
    return error(Rejected, _reason(response))


class AcquireClient:
    """Sends acquire for one (appid, cname, uid, clientRequest), with retries and failover across hosts."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        hosts: Sequence[str],
        credentials: Credentials,
        *,
        backoff_scale: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not hosts:
            raise ValueError("at least one Agora host is needed")
        self.http = http
        self.hosts = tuple(h.rstrip("/") for h in hosts)
        self.auth = httpx.BasicAuth(*credentials.basic_auth())
        self.backoff_scale = backoff_scale
        self.sleep = sleep
        self.rng = rng or random.Random()

    def host_for(self, attempt: int, last_error: AcquireError | None) -> str:
        """Same host for a second try, then the next one; a network failure moves on at once (Agora's advice)."""
        step = attempt if isinstance(last_error, Transient) and last_error.status is None else attempt // 2
        return self.hosts[step % len(self.hosts)]

    def _wait(self, state: RetryCallState) -> float:
        base = BACKOFF[min(state.attempt_number, len(BACKOFF)) - 1]
        return self.backoff_scale * base * (1 + 0.25 * self.rng.random())

    async def acquire(
        self,
        appid: str,
        cname: str,
        uid: str,
        client_request: dict[str, object],
        *,
        before_attempt: Callable[[], Awaitable[None]],
        on_rate_limited: Callable[[RateLimited], Awaitable[None]],
        after_attempt: Callable[[Attempt], Awaitable[None]] | None = None,
    ) -> Acquired:
        """Return the ID, or raise the last AcquireError once attempts are spent or the request is rejected.

        `after_attempt` hears of every HTTP attempt, failed or not, retried or not (to count and log it)."""
        body: dict[str, object] = {"cname": cname, "uid": uid, "clientRequest": client_request}
        last: list[AcquireError] = []
        retrying = AsyncRetrying(
            stop=stop_after_attempt(ATTEMPTS),
            wait=self._wait,
            retry=retry_if_exception_type((Transient, RateLimited)),
            reraise=True,
            sleep=self.sleep,
        )
        async for attempt in retrying:
            with attempt:
                host = self.host_for(attempt.retry_state.attempt_number - 1, last[-1] if last else None)
                await before_attempt()
                sent = time.monotonic()
                try:
                    got = await self._attempt(host, appid, body)
                except AcquireError as exc:
                    last.append(exc)
                    if after_attempt is not None:
                        await after_attempt(Attempt(host, time.monotonic() - sent, exc))
                    if isinstance(exc, RateLimited):
                        await on_rate_limited(exc)
                    raise
                if after_attempt is not None:
                    await after_attempt(Attempt(host, time.monotonic() - sent, None))
                return got
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def _attempt(self, host: str, appid: str, body: dict[str, object]) -> Acquired:
        url = f"{host}/v1/apps/{appid}/cloud_recording/acquire"
        sent = time.monotonic()
        try:
            response = await self.http.post(
                url, json=body, auth=self.auth, headers={"Content-Type": "application/json;charset=utf-8"}
            )
        except httpx.TimeoutException as exc:
            raise Transient(
                f"timed out after {time.monotonic() - sent:.1f} s at {host} ({type(exc).__name__})", status=0, host=host
            ) from None
        except httpx.TransportError as exc:
            raise Transient(f"network error at {host}: {type(exc).__name__}", host=host) from None
        outcome = classify(response, host)
        if isinstance(outcome, AcquireError):
            raise outcome
        return Acquired(outcome, response.headers.get("x-request-id", ""), sent, host)
