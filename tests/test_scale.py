"""No size turns into an outage: the regression tests of issue 13's cliffs, against a real Redis and a running
daemon (the cost curves themselves are benchmarks: benchmarks/scale.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from ridpool import AsyncPoolClient, PoolClient, functions
from ridpool.keys import pool_keys
from ridpool.meta import PoolMeta, publish
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, FAST, SECRET, eventually, make_config, running, web_pool
from tests.poolkit import make_entry

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, rate_limit=10_000) as s:
        yield s


def channels(n: int, start: int = 0) -> tuple[str, ...]:
    return tuple(f"room-{i}" for i in range(start, start + n))


def add_entries(r: redis.Redis, pool: str, cnames: tuple[str, ...]) -> None:
    keys = pool_keys(PREFIX, pool)
    functions.load_library(r)
    pipe = r.pipeline(transaction=False)
    for cname in cnames:
        call = functions.add_call(keys, make_entry(r, pool, cname=cname, life=200), queue_cname=cname)
        pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
    assert set(pipe.execute()) == {b"ADDED"}


def test_a_pool_of_5000_channels_is_published_popped_and_grown_without_losing_its_metadata(r: redis.Redis) -> None:
    """Published in chunks (Lua's unpack limit is ~8,000 values), every channel pops; grown to 9,000 channels
    (past that limit in one call) and shrunk back, the old channels pop throughout and the dropped ones stop."""
    keys = pool_keys(PREFIX, "rooms")
    small, grown = channels(5000), channels(9000)
    assert publish(r, keys, PoolMeta("rooms", APPID, small, 1, 270.0), owner="a", live_ms=0).outcome == "PUBLISHED"
    add_entries(r, "rooms", small[::50])
    with PoolClient(redis.Redis.from_url(_url(r)), prefix=PREFIX) as client:
        assert client.pop("rooms", cname="room-4950").cname == "room-4950"
        again = publish(r, keys, PoolMeta("rooms", APPID, small, 1, 270.0), owner="a", live_ms=0)
        assert again.outcome == "CURRENT"  # nothing changed: one small write
        assert publish(r, keys, PoolMeta("rooms", APPID, grown, 1, 270.0), owner="a", live_ms=0).ok
        add_entries(r, "rooms", ("room-8999", "room-0"))
        assert client.pop("rooms", cname="room-8999").cname == "room-8999"
        assert client.pop("rooms", cname="room-0").cname == "room-0"
        assert publish(r, keys, PoolMeta("rooms", APPID, small, 1, 270.0), owner="a", live_ms=0).ok
        assert r.hexists(keys.meta, "c:room-4999") and not r.hexists(keys.meta, "c:room-5000")
        assert r.hget(keys.meta, "mode") == b"named" and r.hget(keys.meta, "channels") == b"5000"
        stats = client.stats("rooms")
    assert stats.known and len(stats.channels) == 5000 and stats.size == len(small[::50]) + 2 - 3  # 3 popped


def _url(r: redis.Redis) -> str:
    kwargs = r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


async def test_9000_announcements_ending_together_leave_other_pools_refilling_and_announce_working(
    redis_url: str, r: redis.Redis, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """9,000 announcements pending, all ending in the same second: a template pool keeps refilling its pops, a new
    announcement is taken, and Redis forgets the ended ones in chunks (no call fails on Lua's unpack limit)."""
    classes = {"name": "classes", "appid": APPID, "announced": True, "uid": "527841", "announce_grace": 0}
    config = make_config(redis_url, sim.url, web_pool(3), classes, rate_limit=10_000)
    keys = pool_keys(PREFIX, "classes")
    async with running(config, timing=FAST):
        await eventually(lambda: r.exists(keys.meta), what="the pools published")
        # Full before the flood: a replica leases only once its first publication stands, and 9,000 empty
        # channels would then come first (emptiest first) while they are due.
        await eventually(lambda: r.zcard(pool_keys(PREFIX, "web").queue(None)) == 3, what="web full")
        at = int(r.time()[0]) * 1000 + 4_000
        pipe = r.pipeline(transaction=False)
        for cname in channels(9000):
            call = functions.announce_call(keys, cname, at=at)
            pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
        assert len(pipe.execute()) == 9000
        assert r.zcard(keys.announced) == 9000
        await eventually(lambda: int(r.time()[0]) * 1000 > at + 1000, timeout=15, what="the announcements' end")
        for _ in range(3):
            await aclient.pop("web")
        await eventually(lambda: _size(aclient, "web", 3), timeout=10, what="web refilled after the end")
        late = await aclient.announce("classes", "late-class", at=60)
        await eventually(lambda: r.zcard(keys.announced) == 1, timeout=10, what="the ended ones forgotten")
    assert late.until_ms >= late.at_ms and r.zscore(keys.announced, "late-class") is not None


async def _size(aclient: AsyncPoolClient, pool: str, n: int) -> bool:
    return (await aclient.stats(pool)).size == n


async def test_a_popped_channel_of_a_large_pool_is_refilled_within_a_second(
    redis_url: str, r: redis.Redis, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """2,000 named channels full: a pop of one names it in the change feed and the daemon refills it within a
    second, without looking at the other 1,999 (their queues are swept once, at start)."""
    names = channels(2000)
    rooms = {"name": "rooms", "appid": APPID, "cnames": list(names), "uid": "527841", "size": 1}
    config = make_config(redis_url, sim.url, rooms, rate_limit=10_000)
    keys = pool_keys(PREFIX, "rooms")
    async with running(config, timing=FAST):
        await eventually(lambda: _size(aclient, "rooms", 2000), timeout=60, what="2,000 channels filled")
        r.config_resetstat()
        popped = await aclient.pop("rooms", cname="room-1234")
        started = time.monotonic()
        await eventually(lambda: r.zcard(keys.queue("room-1234")) == 1, timeout=5, what="room-1234 refilled")
        took = time.monotonic() - started
        await asyncio.sleep(0)  # let the round that refilled it finish its calls
        calls = r.info("commandstats")
    assert popped.cname == "room-1234" and took < 1.0
    swept = calls.get("cmdstat_fcall", {}).get("calls", 0)
    assert swept < 50, calls  # a handful of rounds' sweeps and one reserve and add, not 2,000 sweeps
