"""start_slot: the starter's turn at the budget first, then the pop, so the entry never ages in line."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import redis
from ridpool import AsyncPoolClient, CnameNotServed, InvalidArgument, MissingExtra, PoolClient, plugins
from ridpool.budget import Account
from ridpool.keys import account_keys, pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import make_config, rooms_pool, web_pool
from tests.poolkit import fill, publish_pool
from tests.servers import wait_for
from tests.test_ondemand import credentials, sim, write_config

pytestmark = pytest.mark.integration
__all__ = ["credentials", "sim"]  # fixtures shared with test_ondemand
ACCT = account_keys(PREFIX, "default")
WEB, ROOMS = pool_keys(PREFIX, "web"), pool_keys(PREFIX, "rooms")
ACCOUNT = Account(rate_limit=10)


def grants(r: redis.Redis) -> int:
    return int(r.zcard(ACCT.rate))


def test_a_slot_is_a_turn_then_the_oldest_entry(r: redis.Redis, redis_url: str) -> None:
    """With a client given the account (no config, no daemon extra needed), start_slot takes one starter grant,
    then pops the oldest entry: source "pool", one grant in the account's log, nobody left in line."""
    publish_pool(r, PREFIX, "web")
    oldest, _ = fill(r, PREFIX, "web", 2)
    client = PoolClient.from_url(redis_url, prefix=PREFIX, account=ACCOUNT)
    with client, client.start_slot("web", min_ttl=2.0) as entry:
        assert entry.resource_id == oldest.resource_id and entry.source == "pool"
        assert grants(r) == 1 and not r.exists(ACCT.turns)
    assert r.zcard(WEB.queue(None)) == 1


def test_the_entry_is_popped_only_once_the_turn_comes(r: redis.Redis, redis_url: str) -> None:
    """A starter in line behind a full window: its entry stays queued while it waits, and is popped at its turn."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    got: list[object] = []
    with PoolClient.from_url(redis_url, prefix=PREFIX, account=ACCOUNT) as client:
        client.warm()
        seconds, micros = r.time()
        now_us = seconds * 1_000_000 + micros
        r.zadd(ACCT.rate, {f"busy{i}": now_us + i for i in range(10)})  # a full window: the turn is ~1 s away

        def start() -> None:
            with client.start_slot("web") as entry:
                got.append(entry)

        starter = threading.Thread(target=start)
        starter.start()
        wait_for(lambda: r.zcard(ACCT.turns) == 1, 5, what="the starter in line")
        assert r.zcard(WEB.queue(None)) == 1  # not popped while it waits
        starter.join(5)
    assert len(got) == 1 and r.zcard(WEB.queue(None)) == 0


async def test_the_async_slot_of_a_named_channel(r: redis.Redis, redis_url: str) -> None:
    """`async with aclient.start_slot(pool, cname=...)`: the same, for a channel of a named pool."""
    publish_pool(r, PREFIX, "rooms", cnames=("room-1", "room-2"))
    [stored] = fill(r, PREFIX, "rooms", 1, cname="room-2", named=True)
    async with AsyncPoolClient.from_url(redis_url, prefix=PREFIX, account=ACCOUNT) as client:
        async with client.start_slot("rooms", cname="room-2") as entry:
            assert entry.resource_id == stored.resource_id and entry.cname == "room-2"
        with pytest.raises(CnameNotServed):
            async with client.start_slot("rooms", cname="room-9"):
                pass
    assert grants(r) == 2


def test_a_miss_acquires_on_the_spot_with_the_turn_and_takes_a_second_for_the_start(
    r: redis.Redis, redis_url: str, sim: Simulator, credentials: None
) -> None:
    """Nothing in the pool: the acquire uses the turn already held (one grant), then a second turn is taken for
    the start (two grants in all); the ID starts at the simulator for its own channel."""
    publish_pool(r, PREFIX, "rooms", cnames=("room-1", "room-2", "room-3"))
    config = make_config(redis_url, sim.url, web_pool(), rooms_pool(), rate_limit=10)
    with PoolClient.from_config(config) as client, client.start_slot("rooms", cname="room-1") as entry:
        assert entry.source == "acquired" and entry.cname == "room-1"
        assert grants(r) == 2 and sim.stats().requests == 1
    assert sim.check(entry.resource_id, appid=entry.appid, cname="room-1", uid=entry.uid) is None


async def test_an_async_miss_acquires_for_an_announced_channel_never_announced(
    r: redis.Redis, redis_url: str, sim: Simulator, credentials: None
) -> None:
    """An announced pool's channel nobody announced: acquired on the spot (as pop_or_acquire does)."""
    classes = {"name": "classes", "appid": "0123456789abcdef0123456789abcdef", "announced": True, "uid": "42"}
    publish_pool(r, PREFIX, "classes")
    client = AsyncPoolClient.from_config(make_config(redis_url, sim.url, classes, rate_limit=10))
    async with client, client.start_slot("classes", cname="class-7") as entry:
        assert entry.source == "acquired" and entry.cname == "class-7"
    assert grants(r) == 2 and sim.stats().acquired == 1


def test_a_wait_blocks_for_an_entry_then_takes_a_fresh_turn(r: redis.Redis, redis_url: str) -> None:
    """wait=5 on an empty pool: the pop blocks until an entry is added, then a new turn is taken (the first went
    stale while it waited): source "pool", two grants."""
    publish_pool(r, PREFIX, "web")
    with PoolClient.from_url(redis_url, prefix=PREFIX, account=ACCOUNT) as client:
        client.warm()
        blocked = lambda: any(c["cmd"] == "blpop" for c in r.client_list())  # noqa: E731
        adder = threading.Thread(target=lambda: (wait_for(blocked, what="the pop waiting"), fill(r, PREFIX, "web", 1)))
        adder.start()
        with client.start_slot("web", wait=5.0) as entry:
            assert entry.source == "pool"
        adder.join()
    assert grants(r) == 2 and int(r.hget(WEB.stats, "misses") or 0) == 0


def test_without_the_daemon_extra_a_hit_works_and_a_miss_names_the_extra(
    r: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The starter-only install: start_slot on a pool hit works (budget from the file); a miss says what to
    install."""
    monkeypatch.setattr(plugins, "_entry_points", lambda group: {})
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1)
    with PoolClient.from_config(write_config(tmp_path, redis_url, "http://agora.test")) as client:
        with client.start_slot("web") as entry:
            assert entry.source == "pool"
        with pytest.raises(MissingExtra, match=r"ridpool\[daemon\]"), client.start_slot("web"):
            pass


def test_a_slot_needs_the_budget_and_sane_arguments(r: redis.Redis, redis_url: str) -> None:
    """No account (from_url without account=): InvalidArgument saying so; min_ttl out of range: refused before a
    turn is taken."""
    client = PoolClient.from_url(redis_url, prefix=PREFIX)
    with client, pytest.raises(InvalidArgument, match="rate="), client.start_slot("web"):
        pass
    client = PoolClient.from_url(redis_url, prefix=PREFIX, account=ACCOUNT)
    with client, pytest.raises(InvalidArgument, match="min_ttl"), client.start_slot("web", min_ttl=float("nan")):
        pass
    assert grants(r) == 0
