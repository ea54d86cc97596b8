"""The shared budget in Redis: a ceiling on every window, spaced grants, a 429 cooldown every replica obeys."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import redis
import redis.asyncio
from ridpool import functions
from ridpool.daemon.limiter import Budget
from ridpool.keys import account_keys

from tests.conftest import PREFIX

pytestmark = pytest.mark.integration


async def test_concurrent_takers_never_exceed_the_limit_in_any_window(redis_url: str) -> None:
    """Six budgets (replicas) taking as fast as they can: by Redis time, no window holds more than the limit."""
    client = redis.asyncio.Redis.from_url(redis_url)
    keys = account_keys(PREFIX, "acct")
    budgets = [Budget(client, keys, rate=20) for _ in range(6)]  # 20 per 1.05 s, 52.5 ms apart
    log: dict[bytes, float] = {}  # every grant, by the server time the function recorded it at
    deadline = time.monotonic() + 2.5

    async def taker(budget: Budget) -> None:
        while time.monotonic() < deadline:
            await budget.take()

    async def watcher(done: asyncio.Future[object]) -> None:
        # The log keeps a window (1.05 s) of grants; copying it every 0.2 s, and once more at the end, misses none.
        while not done.done():
            log.update(await client.zrange(keys.rate, 0, -1, withscores=True))
            await asyncio.wait([done], timeout=0.2)
        log.update(await client.zrange(keys.rate, 0, -1, withscores=True))

    takers = asyncio.gather(*(taker(b) for b in budgets))
    await asyncio.gather(watcher(takers), takers)
    await client.aclose()
    window = budgets[0].window
    grants = sorted(round(us) for us in log.values())  # whole us, as the log keeps them
    assert len(grants) >= 40 and len(grants) == sum(b.granted + b.stale for b in budgets)
    for i in range(len(grants) - window.limit):
        assert grants[i + window.limit] - grants[i] >= window.window_ms * 1000
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 0.9 * window.window_ms * 1000 / window.limit - 1


def test_grants_are_spaced_and_a_cooldown_stops_everyone(r: redis.Redis) -> None:
    """A second take right after a grant waits window/limit; during a cooldown every take waits it out."""
    keys = account_keys(PREFIX, "acct")
    take = functions.take_call(keys, limit=10, window_ms=1050, ticket="a")
    assert functions.parse_wait(functions.execute(r, take)) == 0
    wait = functions.parse_wait(functions.execute(r, functions.take_call(keys, limit=10, window_ms=1050, ticket="b")))
    assert 0.09 < wait <= 0.095
    functions.execute(r, functions.cooldown_call(keys, 5.0))
    assert functions.parse_wait(functions.execute(r, take)) == 1.0  # a starter asks again within a second
    functions.execute(r, functions.cooldown_call(keys, 1.0))  # never shortens a longer wait
    assert r.pttl(keys.cooldown) > 4000
