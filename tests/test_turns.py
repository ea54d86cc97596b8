"""Starters first: starters' requests are granted in the order they asked, ahead of the daemon's refills, which
take what is left (and their floor); one replica draws the whole window at any rate."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
import redis.asyncio
from ridpool import PoolClient, functions, plans
from ridpool.budget import Account, window_for
from ridpool.daemon.limiter import Budget
from ridpool.keys import account_keys

from tests.conftest import PREFIX
from tests.poolkit import fill, publish_pool
from tests.servers import wait_for

pytestmark = pytest.mark.integration
ACCT = account_keys(PREFIX, "default")
LINE = (ACCT.rate, ACCT.cooldown, ACCT.turns, ACCT.turns_lease)


def fill_window(r: redis.Redis, limit: int) -> None:
    """`limit` grants logged now: the next one is a window away."""
    seconds, micros = r.time()
    now = seconds * 1_000_000 + micros
    r.zadd(ACCT.rate, {f"earlier-{i}": now - limit + i for i in range(limit)})


def test_starters_are_granted_in_the_order_they_first_asked(r: redis.Redis, redis_url: str) -> None:
    """Eight starters, each a client of its own, join the line one after another behind a full window: their
    grants come in exactly that order, one spacing apart."""
    functions.load_library(r)
    fill_window(r, 20)
    granted: list[int] = []
    lock = threading.Lock()
    clients = [PoolClient.from_url(redis_url, prefix=PREFIX) for _ in range(8)]

    def starter(i: int) -> None:
        clients[i].take(rate=20)
        with lock:
            granted.append(i)

    threads = []
    for i in range(8):
        threads.append(threading.Thread(target=starter, args=(i,)))
        threads[-1].start()
        wait_for(lambda n=i + 1: r.zcard(ACCT.turns) == n or len(granted) > 0, 5, what=f"starter {i} in line")
    for t in threads:
        t.join(10)
    for c in clients:
        c.close()
    assert granted == list(range(8))
    assert not r.exists(ACCT.turns) and not r.exists(ACCT.turns_lease)


def test_requests_that_must_go_out_sooner_go_first_and_the_others_stay_first_come_first_served(
    r: redis.Redis,
) -> None:
    """Behind a full window, in the order they ask: a request with no use-by, one whose entry must be used in
    200 s, two more with none, one in 10 s, one in 5 s. The line holds the 5 s and 10 s requests first, then the
    ones with none in the order they asked, then the 200 s one (past the 60 s horizon); a bad use-by is refused."""
    functions.load_library(r)
    fill_window(r, 10)
    now_ms = int(r.time()[0]) * 1000

    def ask(ticket: str, use_by_s: float | None = None) -> None:
        extra = () if use_by_s is None else (round(now_ms + use_by_s * 1000),)
        assert int(r.fcall("ridpool_take", 4, *LINE, 10, 1050, ticket, *extra)) > 0

    for ticket, use_by in [("q1", None), ("late", 200), ("q2", None), ("q3", None), ("soon", 10), ("sooner", 5)]:
        ask(ticket, use_by)
    assert [t.decode() for t in r.zrange(ACCT.turns, 0, -1)] == ["sooner", "soon", "q1", "q2", "q3", "late"]
    for bad in ("-1", "1.5", "nan", "1e16"):
        with pytest.raises(redis.ResponseError, match="BAD_ARGUMENT use_by_ms"):
            r.fcall("ridpool_take", 4, *LINE, 10, 1050, "bad", bad)
    assert r.zscore(ACCT.turns, "bad") is None


def test_a_bursts_starters_are_served_in_the_order_their_entries_expire_whatever_order_they_ask_in(
    r: redis.Redis, redis_url: str
) -> None:
    """Six channels of a named pool, each with one entry, the later channels' entries expiring sooner; their
    starters ask in channel order behind a full window: the grants (and pops) come in the order the entries
    expire, so the entry that would die first is started first."""
    names = [f"room-{i}" for i in range(6)]
    publish_pool(r, PREFIX, "rooms", cnames=tuple(names))
    for i, cname in enumerate(names):
        fill(r, PREFIX, "rooms", 1, cname=cname, named=True, life=200.0 - 10 * i)
    fill_window(r, 10)
    started: list[str] = []
    lock = threading.Lock()
    clients = [PoolClient.from_url(redis_url, prefix=PREFIX, account=Account(rate_limit=10)) for _ in names]

    def starter(i: int) -> None:
        with clients[i].start_slot("rooms", cname=names[i]) as entry, lock:
            started.append(entry.cname)

    threads = []
    for i in range(len(names)):
        threads.append(threading.Thread(target=starter, args=(i,)))
        threads[-1].start()
        wait_for(lambda n=i + 1: r.zcard(ACCT.turns) == n or started, 5, what=f"starter {i} in line")
    for t in threads:
        t.join(10)
    for c in clients:
        c.close()
    assert started == names[::-1]


def test_a_starter_that_stops_asking_loses_its_place_within_its_grace(r: redis.Redis, redis_url: str) -> None:
    """A ticket that asked once and died (a killed process) holds the head of the line only until its lease
    lapses (told wait + 0.5 s); the starter behind it is then served."""
    functions.load_library(r)
    fill_window(r, 10)
    told = r.fcall("ridpool_take", 4, *LINE, 10, 1050, "dead-starter")
    assert 1000 <= told <= 1060  # the window frees in 1.05 s
    started = time.monotonic()
    with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
        client.take(rate=10)
    took = time.monotonic() - started
    assert told / 1000 + 0.4 < took < told / 1000 + 1.0, took
    assert r.zscore(ACCT.turns, "dead-starter") is None


def test_a_ticket_whose_grant_came_late_asks_again_at_the_head_of_the_line_once(r: redis.Redis) -> None:
    """A granted ticket asking again within the window goes ahead of a starter already waiting (its late grant
    stays counted); asking a third time it waits at the back like a new request."""
    functions.load_library(r)

    def ask(ticket: str) -> int:
        return int(r.fcall("ridpool_take", 4, *LINE, 10, 1050, ticket))

    assert ask("late") == 0
    assert ask("waiting") > 0  # one spacing behind
    assert ask("late") > 0 and r.zrank(ACCT.turns, "late") == 0  # back at the head
    wait_for(lambda: ask("late") == 0 or None, 2, what="the late ticket's second grant")
    assert r.zscore(ACCT.rate, "late+") is not None and r.zcard(ACCT.rate) == 2
    ask("late")  # a third time: behind "waiting"
    assert r.zrank(ACCT.turns, "late") == 1


async def test_refills_yield_to_waiting_starters_and_still_get_their_floor(redis_url: str) -> None:
    """Four starters asking back to back for 3 s at 20/s leave a refill one grant per refill_max_wait (0.5 s);
    once they stop, the refill gets the whole window again."""
    client = redis.asyncio.Redis.from_url(redis_url)
    await functions.acheck_library(client)
    window = window_for(20)
    budget = Budget(client, ACCT, 20, refill_max_wait=0.5)
    starters: list[float] = []
    refills: list[float] = []
    hogging = time.monotonic() + 3.0

    async def starter() -> None:
        while time.monotonic() < hogging:
            await functions.arun(client, plans.take(ACCT, window))
            starters.append(time.monotonic())

    async def refill(until: float) -> None:
        while time.monotonic() < until:
            await budget.take()
            refills.append(time.monotonic())

    began = time.monotonic()
    await asyncio.gather(*(starter() for _ in range(4)), refill(hogging))
    during = len(refills)
    gaps = [b - a for a, b in zip([began, *refills], refills, strict=False)]
    await refill(time.monotonic() + 2 * window.window_ms / 1000)
    after = len(refills) - during
    await client.aclose()
    assert 4 <= during <= 8 and max(gaps) < 0.5 + 0.3, (during, gaps)
    assert len(starters) >= 0.85 * 3.0 * window.sustained - during
    assert after >= 0.9 * 2 * window.limit - 2, after


@pytest.mark.parametrize("rate", [100, 2000])
async def test_one_replica_draws_the_whole_window_at_any_rate(redis_url: str, rate: int) -> None:
    """64 acquires waiting on one replica's budget: over three windows after the first, grants reach at least 0.95
    of the window's sustained rate (one grant per round trip reached ~84/s at 100 and ~345/s at 2,000)."""
    client = redis.asyncio.Redis.from_url(redis_url)
    await functions.acheck_library(client)
    budget = Budget(client, ACCT, rate)
    seconds = budget.window.window_ms / 1000
    times: list[float] = []
    stop = time.monotonic() + 4.2 * seconds

    async def taker() -> None:
        while time.monotonic() < stop:
            await budget.take()
            times.append(time.monotonic())

    await asyncio.gather(*(taker() for _ in range(64)))
    await client.aclose()
    start = times[0] + seconds
    steady = [t for t in times if start <= t < start + 3 * seconds]
    assert len(steady) / (3 * seconds) >= 0.95 * budget.window.sustained, len(steady)
