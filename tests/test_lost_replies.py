"""Starter errors that say what they are, and lose nothing: a pop whose reply was lost, a client at its cap."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from ridpool import AsyncPoolClient, PoolClient, TooManyConnections, cli
from ridpool.entry import Entry
from ridpool.keys import pool_keys

from tests.conftest import PREFIX
from tests.poolkit import fill, publish_pool
from tests.proxy import Proxy
from tests.servers import RedisProc, RedisServer, processes, wait_for

pytestmark = pytest.mark.integration
WEB = pool_keys(PREFIX, "web")


@pytest.fixture
def entries(r: redis.Redis) -> list[Entry]:
    publish_pool(r, PREFIX, "web")
    return fill(r, PREFIX, "web", 5)


def pops(r: redis.Redis) -> int:
    return int(r.hget(WEB.stats, "pops") or 0)


def left(r: redis.Redis) -> set[bytes]:
    return set(r.zrange(WEB.queue(None), 0, -1))


def block_redis(port: int, seconds: float) -> socket.socket:
    """Send DEBUG SLEEP on a connection of its own and return once Redis is asleep (a probe's PING times out)."""
    sleeper = socket.create_connection(("127.0.0.1", port))
    sleeper.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())

    def asleep() -> bool:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.05, retry=Retry(NoBackoff(), 0)) as probe:
            try:
                probe.ping()
            except redis.TimeoutError:
                return True
        return False

    wait_for(asleep, 5, what="Redis blocked by DEBUG SLEEP")
    return sleeper


@pytest.fixture(scope="module")
def debuggable() -> Iterator[RedisProc]:
    """A redis-server that takes DEBUG from loopback (the session's does not)."""
    with processes(RedisProc("--enable-debug-command", "local")) as (proc,):
        yield proc


def test_a_pop_whose_replies_timed_out_is_retried_and_returns_the_same_entry(debuggable: RedisProc) -> None:
    """Redis asleep (DEBUG SLEEP 1) past the client's 0.4 s timeout: redis-py sends the pop again, every copy runs
    once Redis wakes, and the pop returns the one entry taken; the other four are still queued."""
    r = debuggable.client()
    r.flushall()
    publish_pool(r, PREFIX, "web")
    queued = fill(r, PREFIX, "web", 5)
    with PoolClient.from_url(debuggable.url, prefix=PREFIX, socket_timeout=0.4) as client:
        client.warm()
        sleeper = block_redis(debuggable.port, 1.0)
        entry = client.pop("web")
        sleeper.close()
    assert entry.resource_id == queued[0].resource_id  # the oldest: the first copy's
    assert pops(r) == 1 and len(left(r)) == 4
    [kept] = r.keys(f"{WEB.tag}:popped:*")  # kept for a retry, with an expiry within the entry's life
    assert 0 < r.pttl(kept) <= 30_000
    r.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[Proxy]:
    with Proxy(redis_server.port) as p:
        yield p


def cut_after_the_pop_ran(r: redis.Redis, proxy: Proxy) -> None:
    """Once Redis has run the pop (its reply held by the proxy), reset the connection, then let new ones through."""
    wait_for(lambda: pops(r) == 1, 5, what="the pop to run in Redis")
    proxy.cut()
    proxy.passthrough()


def test_a_pop_whose_connection_was_cut_after_it_ran_returns_the_same_entry(
    r: redis.Redis, proxy: Proxy, entries: list[Entry]
) -> None:
    """The pop ran in Redis, then its connection was reset before the reply came: the retry returns that entry."""
    got: list[Entry] = []
    with PoolClient.from_url(proxy.url, prefix=PREFIX) as client:
        client.warm()
        proxy.hold_reply_to(b"ridpool_pop_packed", 1.5)  # ends before the proxy stops
        popper = threading.Thread(target=lambda: got.append(client.pop("web")))
        popper.start()
        cut_after_the_pop_ran(r, proxy)
        popper.join(10)
    assert [e.resource_id for e in got] == [entries[0].resource_id]
    assert pops(r) == 1 and len(left(r)) == 4


async def test_an_async_pop_whose_connection_was_cut_returns_the_same_entry(
    r: redis.Redis, proxy: Proxy, entries: list[Entry]
) -> None:
    """The asyncio client, the same: cut after the pop ran, retried, the same entry, nothing else taken."""
    async with AsyncPoolClient.from_url(proxy.url, prefix=PREFIX) as client:
        proxy.hold_reply_to(b"ridpool_pop_packed", 1.5)  # ends before the proxy stops
        popping = asyncio.create_task(client.pop("web"))
        await asyncio.to_thread(cut_after_the_pop_ran, r, proxy)
        entry = await asyncio.wait_for(popping, 10)
    assert entry.resource_id == entries[0].resource_id
    assert pops(r) == 1 and len(left(r)) == 4


def test_a_client_at_its_connection_cap_says_so(r: redis.Redis, redis_url: str) -> None:
    """Two waiting pops hold a 2-connection client's connections: a third is TooManyConnections (exit 14), not
    PoolUnavailable, and nothing is popped."""
    publish_pool(r, PREFIX, "web")
    with PoolClient.from_url(redis_url, prefix=PREFIX, max_connections=2) as client:
        client.warm()
        waiting = [threading.Thread(target=lambda: client.pop("web", wait=5.0)) for _ in range(2)]
        for t in waiting:
            t.start()
        wait_for(lambda: sum(c["cmd"] == "blpop" for c in r.client_list()) == 2, 5, what="two blocked pops")
        with pytest.raises(TooManyConnections, match="max_connections") as info:
            client.pop("web")
        assert cli.exit_code(info.value) == cli.EXIT_CONNECTIONS == 14
        fill(r, PREFIX, "web", 2)  # wakes both
        for t in waiting:
            t.join(5)
    assert pops(r) == 2


async def test_an_async_client_at_its_connection_cap_says_so(r: redis.Redis, redis_url: str) -> None:
    """The asyncio client's cap is TooManyConnections too."""
    publish_pool(r, PREFIX, "web")
    async with AsyncPoolClient.from_url(redis_url, prefix=PREFIX, max_connections=1) as client:
        blocked = asyncio.create_task(client.pop("web", wait=5.0))
        await asyncio.to_thread(
            wait_for, lambda: any(c["cmd"] == "blpop" for c in r.client_list()), 5, 0.01, "a blocked pop"
        )
        with pytest.raises(TooManyConnections):
            await client.pop("web")
        fill(r, PREFIX, "web", 1)
        await asyncio.wait_for(blocked, 5)
