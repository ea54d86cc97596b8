"""The refill daemon against a real redis-server and the Agora simulator over HTTP on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest
import redis
from ridpool import AsyncPoolClient, PoolEmpty
from ridpool.daemon.config import Credentials
from ridpool.keys import account_keys, pool_keys
from ridpool.testing import Faults, Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, FAST, SECRET, eventually, make_config, rooms_pool, running, web_pool
from tests.servers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=3) as s:
        yield s


async def sizes(aclient: AsyncPoolClient, pool: str) -> int:
    return (await aclient.stats(pool)).size


async def test_the_daemon_fills_every_pool_with_ids_agora_accepts(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """Pools reach their size; each popped ID is one the simulator issued for that appid/cname/uid, unused."""
    config = make_config(redis_url, sim.url, web_pool(4), rooms_pool(2))
    async with running(config):
        await eventually(lambda: _full(aclient), what="web 4 and rooms 3x2")
        popped = [await aclient.pop("web") for _ in range(4)]
        popped += [await aclient.pop("rooms", cname=room) for room in ("room-1", "room-2", "room-3")]
        await eventually(lambda: _full(aclient), what="the pools refilled after pops")
    for e in popped:
        assert sim.check(e.resource_id, appid=e.appid, cname=e.cname, uid=e.uid) is None, e
    assert len({e.cname for e in popped[:4]}) == 4  # each web entry has a label of its own
    assert sim.stats().rate_limited == 0


async def _full(aclient: AsyncPoolClient) -> bool:
    web, rooms = await aclient.stats("web"), await aclient.stats("rooms")
    return web.size == 4 and [c.size for c in rooms.channels] == [2, 2, 2]


async def test_uids_from_a_range_are_unique_among_live_entries(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """Each entry of a uid_range pool gets a uid of the range that no other live entry of the pool holds."""
    pool = rooms_pool(5, uid_range=[900000, 900019], max_in_flight=5)
    async with running(make_config(redis_url, sim.url, pool, rate_limit=10)):
        await eventually(lambda: _size_is(aclient, "rooms", 15), what="15 room entries")
    entries = [await aclient.pop("rooms", cname=c) for c in ("room-1", "room-2", "room-3") for _ in range(5)]
    uids = [int(e.uid) for e in entries]
    assert len(set(uids)) == 15 and all(900000 <= u <= 900019 for u in uids)


async def _size_is(aclient: AsyncPoolClient, pool: str, n: int) -> bool:
    return await sizes(aclient, pool) == n


async def test_three_replicas_never_overfill_nor_exceed_the_rate(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Three symmetric replicas fill one pool to exactly its size, and Agora never sees more than the rate."""
    queue = pool_keys(PREFIX, "web").queue(None)
    seen: list[int] = []
    config = make_config(redis_url, sim.url, web_pool(12, max_in_flight=6), rate_limit=10)
    async with running(config, replicas=3):

        async def watch() -> bool:
            seen.append(r.zcard(queue))
            return seen[-1] == 12

        await eventually(watch, what="12 entries")
        for _ in range(20):  # keep watching while the replicas keep ticking
            await watch()
            await asyncio.sleep(0.02)
    assert max(seen) == 12
    assert sim.stats().acquired == 12
    assert sim.stats().max_in_window <= 10 and sim.stats().rate_limited == 0


async def test_a_wrong_secret_marks_the_pool_in_error_and_does_not_hammer_agora(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """A 401 is not retried: the pool shows state error with Agora's reason, and attempts are held back."""
    wrong = Credentials(customer_id=CUSTOMER_ID, customer_secret="wrong-secret")  # type: ignore[arg-type]
    config = make_config(redis_url, sim.url, web_pool(3))
    async with running(config, credentials=wrong):
        await eventually(lambda: _state(aclient, "web", "error"), what="state error")
        stats = await aclient.stats("web")
        await asyncio.sleep(1.5)  # a window to count attempts in, not a wait for anything to settle
        later = await aclient.stats("web")
    assert "401" in stats.last_error and "Invalid authentication credentials" in stats.last_error
    assert "X-Request-Id" in stats.last_error
    assert later.counters["errors"] - stats.counters["errors"] <= 2  # held 2 s after the first failure
    assert sim.stats().acquired == 0


async def _state(aclient: AsyncPoolClient, pool: str, state: str) -> bool:
    return (await aclient.stats(pool)).state == state


async def test_transient_faults_and_malformed_answers_are_retried_and_never_stored(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """5xx and malformed 200s are counted and retried; every stored entry is a real, valid ID."""
    sim.faults = Faults(p_5xx=0.3, p_malformed=0.3)
    config = make_config(redis_url, sim.url, web_pool(6), rate_limit=10)
    with capture_logs() as logs:
        async with running(config):
            await eventually(lambda: _size_is(aclient, "web", 6), timeout=20, what="6 entries despite faults")
    entries = [await aclient.pop("web") for _ in range(6)]
    assert all(sim.check(e.resource_id, appid=e.appid, cname=e.cname, uid=e.uid) is None for e in entries)
    failures = [e for e in logs if e["event"] == "agora.acquire_failed"]
    assert {f["kind"] for f in failures} >= {"transient", "malformed"}
    assert all(f["request_id"] for f in failures)  # Agora support asks for it
    assert sim.stats().errors_5xx + sim.stats().malformed == len(failures)


async def test_a_429_makes_every_replica_of_the_account_wait(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """After a 429 the account's shared cooldown is set, so no replica sends until it has passed."""
    sim.faults = Faults(p_429=1.0)
    config = make_config(redis_url, sim.url, web_pool(2))
    cooldown = account_keys(PREFIX, "default").cooldown
    async with running(config, replicas=2):
        await eventually(lambda: r.pttl(cooldown) > 0, what="the shared cooldown")
        sent = sim.stats().requests
        wait_ms = r.pttl(cooldown)
        await asyncio.sleep(min(wait_ms, 500) / 1000 * 0.8)  # inside the cooldown: nobody may send
        assert sim.stats().requests == sent
        sim.faults = Faults()
        await eventually(lambda: _size_is(aclient, "web", 2), timeout=20, what="the pool to fill after 429s")
    assert (await aclient.stats("web")).counters["rate_limited"] >= 1


async def test_timeouts_are_retried_and_the_pool_fills(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """An acquire that times out is retried (and fails over) rather than stored or crashing the daemon."""
    sim.faults = Faults(p_timeout=0.5, timeout_hold=1.0)
    config = make_config(redis_url, sim.url, web_pool(3), timeout=0.2)
    async with running(config):
        await eventually(lambda: _size_is(aclient, "web", 3), timeout=20, what="3 entries despite timeouts")
    assert sim.stats().timeouts >= 1


async def test_the_daemon_recovers_from_a_redis_restart_by_itself(
    redis_url: str, redis_server: RedisServer, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """Redis killed and restarted empty: the daemon reloads its functions, republishes and refills."""
    config = make_config(redis_url, sim.url, web_pool(3))
    with capture_logs() as logs:
        async with running(config):
            await eventually(lambda: _size_is(aclient, "web", 3), what="3 entries")
            redis_server.stop()
            with pytest.raises(Exception, match="unavailable"):
                await aclient.pop("web")
            await eventually(lambda: any(e["event"] == "redis.unavailable" for e in logs), what="the outage log")
            redis_server.start()
            await eventually(lambda: _size_is(aclient, "web", 3), timeout=15, what="a refill after the restart")
    assert any(e["event"] == "redis.recovered" for e in logs)
    entry = await aclient.pop("web")
    assert sim.check(entry.resource_id, appid=entry.appid, cname=entry.cname, uid=entry.uid) is None


async def test_a_pool_with_size_zero_is_published_and_never_acquired_for(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """size = 0 publishes the pool (pops get PoolEmpty, not UnknownPool) and spends no budget on it."""
    config = make_config(redis_url, sim.url, web_pool(0))
    async with running(config):
        await eventually(lambda: _known(aclient, "web"), what="the pool's metadata")
        with pytest.raises(PoolEmpty):
            await aclient.pop("web")
    assert sim.stats().requests == 0


async def _known(aclient: AsyncPoolClient, pool: str) -> bool:
    return (await aclient.stats(pool)).known


async def test_the_secret_is_in_no_log_and_no_redis_key_or_value(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """With faults and errors exercised, the customer secret appears in no log event and nowhere in Redis."""
    sim.faults = Faults(p_5xx=0.3, p_malformed=0.2)
    config = make_config(redis_url, sim.url, web_pool(3), rooms_pool(1))
    with capture_logs() as logs:
        async with running(config):
            await eventually(lambda: _size_is(aclient, "web", 3), timeout=20, what="3 entries")
    assert logs and SECRET not in repr(logs)
    dump = b""
    for key in r.scan_iter(count=1000):
        dump += key + (r.dump(key) or b"")
    assert dump and SECRET.encode() not in dump


async def test_leases_are_renewed_while_slow_acquires_run_so_nothing_is_overfilled(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """A lease shorter than an acquire is kept alive by its replica: no second acquire for the same place."""
    sim.faults = Faults(latency=1.2)
    inflight = pool_keys(PREFIX, "web").inflight
    deadlines: list[float] = []
    config = make_config(redis_url, sim.url, web_pool(2), rate_limit=10, timeout=5)
    async with running(config, timing=dataclasses.replace(FAST, lease=0.4, heartbeat=0.1)):

        def renewed() -> bool:
            deadlines.extend(score for _, score in r.zrange(inflight, 0, -1, withscores=True))
            return len(set(deadlines)) >= 4

        await eventually(renewed, what="lease deadlines moving forward")
        await eventually(lambda: _size_is(aclient, "web", 2), what="2 entries")
    assert sim.stats().acquired == 2 and sim.stats().requests == 2
