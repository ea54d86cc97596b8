"""The demand-source seam: a source written here, in the test, is planned and served end to end by a running
daemon without anything in refill.py or service.py knowing it; a failing source stops its own pool only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence

import pytest
import redis
from ridpool import AsyncPoolClient
from ridpool.daemon.planner import Demand
from ridpool.daemon.service import Daemon
from ridpool.testing import Simulator
from structlog.testing import capture_logs

from tests.daemonkit import CREDENTIALS, CUSTOMER_ID, FAST, SECRET, eventually, make_config, rooms_pool, web_pool
from tests.poolkit import server_ms

pytestmark = pytest.mark.integration


class Calendar:
    """A fixed calendar: `count` more entries per channel of `pool`, ready at each instant, used up by pops."""

    def __init__(self, pool: str, instants: Sequence[int], count: int, window_ms: int = 3_000) -> None:
        self.pool, self.instants, self.count, self.window_ms = pool, instants, count, window_ms
        self.asked: list[int] = []

    @property
    def pools(self) -> Sequence[str]:
        return [self.pool]

    async def refresh(self, pool: str, now_ms: int, changed: frozenset[str]) -> None:
        self.asked.append(now_ms)

    def demands(self, pool: str, now_ms: int) -> Sequence[Demand]:
        return [
            Demand(pool, None, self.count, at, at + self.window_ms, f"calendar at {at}", consumable=True)
            for at in self.instants
            if now_ms < at + self.window_ms
        ]

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]:
        return {"calendar_next": str(min((at for at in self.instants if at > now_ms), default=0))}


class Broken:
    """A source whose reads always fail, for one pool."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.tries = 0

    @property
    def pools(self) -> Sequence[str]:
        return [self.pool]

    async def refresh(self, pool: str, now_ms: int, changed: frozenset[str]) -> None:
        self.tries += 1
        raise RuntimeError("the calendar service is down")

    def demands(self, pool: str, now_ms: int) -> Sequence[Demand]:
        return []

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]:
        return {}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=3) as s:
        yield s


async def test_a_new_source_is_planned_and_served_without_the_refill_knowing_it(
    redis_url: str, r: redis.Redis, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """A calendar of 6 at an instant 4 s ahead: 2 + 6 ready at the instant, its reason and notes in the stats
    hash, the 6 popped and not acquired again (only the standing 2 is refilled)."""
    at = server_ms(r) + 4_000
    calendar = Calendar("web", [at], 6)
    config = make_config(redis_url, sim.url, web_pool(2, max_age=30), rate_limit=10)
    daemon = Daemon(config, CREDENTIALS, timing=FAST, replica_id="c0", extra_sources=[lambda _ctx: calendar])
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await eventually(lambda: _note(aclient, str(at)), what="the source's note in the stats hash")
        await eventually(lambda: server_ms(r) >= at, timeout=10, what="the instant")
        ready = await aclient.stats("web")
        popped = [await aclient.pop("web") for _ in range(6)]
        await eventually(lambda: server_ms(r) >= at + 3_500, timeout=10, what="the window's end")
        after = await aclient.stats("web")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert ready.size == 8 and ready.target_now == 8 and ready.target_reason.startswith(f"calendar at {at} +6")
    assert after.extra["calendar_next"] == "0" and calendar.asked
    assert len({e.resource_id for e in popped}) == 6
    assert after.size == 2 and sim.stats().acquired == 8  # the popped six used the calendar up


async def test_a_failing_source_stops_its_own_pool_and_is_logged_once(
    redis_url: str, r: redis.Redis, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """A source failing every round for `rooms`: `web` fills, `rooms` is in error with the source's message,
    logged once (not once per round)."""
    config = make_config(redis_url, sim.url, web_pool(3), rooms_pool(1), rate_limit=10)
    broken = Broken("rooms")
    with capture_logs() as logs:
        daemon = Daemon(config, CREDENTIALS, timing=FAST, replica_id="b0", extra_sources=[lambda _ctx: broken])
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            await eventually(lambda: _size(aclient, "web", 3), what="web full")
            await eventually(lambda: _state(aclient, "rooms", "error"), what="rooms in error")
            await eventually(lambda: broken.tries >= 10, what="ten rounds asking the broken source")
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    rooms = await aclient.stats("rooms")
    assert "the calendar service is down" in rooms.last_error and rooms.size == 0
    failed = [e for e in logs if e["event"] == "refill.source_failed"]
    assert len(failed) == 1 and failed[0]["pool"] == "rooms", failed


async def _note(aclient: AsyncPoolClient, value: str) -> bool:
    return (await aclient.stats("web")).extra.get("calendar_next") == value


async def _size(aclient: AsyncPoolClient, pool: str, n: int) -> bool:
    return (await aclient.stats(pool)).size == n


async def _state(aclient: AsyncPoolClient, pool: str, state: str) -> bool:
    return (await aclient.stats(pool)).state == state
