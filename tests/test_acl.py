"""A pop that fails removes nothing: users lacking each command the pop uses, wrong-typed keys, a full Redis.

And the two ACLs the README documents (a pop-only starter, the daemon) are exactly enough.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from ridpool import OutOfMemory, PermissionDenied, PoolClient, PoolEmpty, WrongType, functions
from ridpool.budget import Account
from ridpool.keys import pool_keys
from ridpool.testing import Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, FAST, SECRET, eventually, make_config, rooms_pool, running, web_pool
from tests.poolkit import fill, publish_pool
from tests.servers import RedisProc, processes

POOL = "web"
KEYS = pool_keys(PREFIX, POOL)
README = Path(__file__).parent.parent / "README.md"


def readme_acl(user: str) -> list[str]:
    """The commands of `ACL SETUSER <user>` as the README writes it (the line and its indented continuations)."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"ACL SETUSER {user} "))
    block = [lines[start], *(line for line in itertools.takewhile(lambda x: x.startswith("  +"), lines[start + 1 :]))]
    return [token for line in block for token in line.split() if token.startswith("+")]


ALL_STARTER = readme_acl("starter")
CONNECTION = ["+ping", "+hello", "+client|setname"]
STARTER_COMMANDS = [c for c in ALL_STARTER if c not in CONNECTION]
DAEMON_COMMANDS = [c for c in readme_acl("ridpool") if c not in CONNECTION]
# What a pop cannot do without (it fails, removing nothing); the rest only tidies the queue's expiry or drops
# a queue of another data set, and a pop without them still hands out its entry.
ESSENTIAL = {"+fcall", "+hmget", "+info", "+time", "+zadd", "+zpopmin", "+hincrby"}
# ... and what the pop cannot do without when the oldest entry is too short-lived for min_ttl and one further on
# must be taken.
ESSENTIAL_FURTHER = {"+fcall", "+hmget", "+info", "+time", "+zadd", "+zpopmin", "+zrangebyscore", "+zrem", "+hincrby"}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisProc]:
    with processes(RedisProc()) as (proc,):
        yield proc


@pytest.fixture
def admin(server: RedisProc) -> Iterator[redis.Redis]:
    r = server.client()
    r.flushall()
    r.function_flush()
    yield r
    r.close()


def user(r: redis.Redis, name: str, commands: list[str]) -> str:
    r.acl_setuser(name, enabled=True, reset=True, passwords=["+pw"], keys=[f"{PREFIX}:*"], commands=commands)
    return name


def starter(server: RedisProc, name: str) -> PoolClient:
    return PoolClient.from_url(
        f"redis://{name}:pw@127.0.0.1:{server.port}/0", prefix=PREFIX, account=Account(rate_limit=10)
    )


def queue_state(r: redis.Redis) -> tuple[set[bytes], int]:
    """The queue's members and the pops counted (a failed pop counts none)."""
    return set(r.zrange(KEYS.queue(None), 0, -1)), int(r.hget(KEYS.stats, "pops") or 0)


@pytest.mark.parametrize("missing", STARTER_COMMANDS)
def test_a_starter_lacking_one_command_loses_no_entry(admin: redis.Redis, server: RedisProc, missing: str) -> None:
    """Without any one command the pop fails removing nothing (or, without a tidying one, still pops): lost 0."""
    publish_pool(admin, PREFIX, POOL)
    entries = fill(admin, PREFIX, POOL, 1)
    functions.load_library(admin)  # a fresh library: the first pop reads the server's identity (INFO)
    name = user(admin, "partial", [*CONNECTION, *(c for c in STARTER_COMMANDS if c != missing)])
    before = queue_state(admin)
    with starter(server, name) as client:
        if missing in ESSENTIAL:
            with pytest.raises(PermissionDenied, match="not allowed"):
                client.pop(POOL)
            assert queue_state(admin) == before
        else:
            assert client.pop(POOL).resource_id == entries[0].resource_id
            assert admin.zcard(KEYS.queue(None)) == 0


@pytest.mark.parametrize("missing", STARTER_COMMANDS)
def test_a_starter_lacking_one_command_loses_no_entry_when_the_head_is_too_short(
    admin: redis.Redis, server: RedisProc, missing: str
) -> None:
    """The oldest entry has 5 s left, min_ttl is 10 s: the pop puts it back and takes the next; lacking any one
    command it fails with nothing removed, or succeeds leaving the short one in place: lost 0."""
    publish_pool(admin, PREFIX, POOL)
    short = fill(admin, PREFIX, POOL, 1, life=5)[0]
    longer = fill(admin, PREFIX, POOL, 1, life=200)[0]
    functions.load_library(admin)
    name = user(admin, "further", [*CONNECTION, *(c for c in STARTER_COMMANDS if c != missing)])
    before = queue_state(admin)
    with starter(server, name) as client:
        if missing in ESSENTIAL_FURTHER:
            with pytest.raises(PermissionDenied, match="not allowed"):
                client.pop(POOL, min_ttl=10)
            assert queue_state(admin) == before
        else:
            assert client.pop(POOL, min_ttl=10).resource_id == longer.resource_id
            remaining = admin.zrange(KEYS.queue(None), 0, -1)
            assert len(remaining) == 1 and short.resource_id.encode() in remaining[0]
            assert admin.pttl(KEYS.queue(None)) > 0


@pytest.mark.parametrize("missing", ["+del", "+hset"])
def test_a_starter_that_cannot_drop_a_stale_queue_fails_without_serving_it(
    admin: redis.Redis, server: RedisProc, missing: str
) -> None:
    """A queue from another data set: a starter that may not drop it gets PermissionDenied, never a stale entry."""
    publish_pool(admin, PREFIX, POOL)
    fill(admin, PREFIX, POOL, 2)
    admin.hset(KEYS.meta, "e:", "0" * 40)  # as if restored from another server's snapshot
    name = user(admin, "nodrop", [*CONNECTION, *(c for c in STARTER_COMMANDS if c != missing)])
    with starter(server, name) as client, pytest.raises(PermissionDenied):
        client.pop(POOL)
    assert int(admin.hget(KEYS.stats, "pops") or 0) == 0
    if missing == "+del":
        assert admin.zcard(KEYS.queue(None)) == 2  # left for someone allowed to drop it; never served


@pytest.mark.parametrize("key", ["stats", "meta", "queue"])
def test_a_wrong_typed_key_fails_the_pop_with_wrong_type_removing_nothing(
    admin: redis.Redis, server: RedisProc, key: str
) -> None:
    """A damaged stats, meta or queue key: WrongType naming it as damage, and the queue exactly as it was."""
    publish_pool(admin, PREFIX, POOL)
    fill(admin, PREFIX, POOL, 3)
    target = {"stats": KEYS.stats, "meta": KEYS.meta, "queue": KEYS.queue(None)}[key]
    admin.delete(target)
    admin.set(target, "damaged")
    before = set(admin.zrange(KEYS.queue(None), 0, -1)) if key != "queue" else set()
    with PoolClient.from_url(server.url, prefix=PREFIX) as client:
        with pytest.raises(WrongType, match="damaged"):
            client.pop(POOL)
        stats = client.stats(POOL)  # never a traceback: the pool shows in error with the reason
    assert stats.state == "error" and "WRONGTYPE" in stats.last_error
    if key != "queue":
        assert set(admin.zrange(KEYS.queue(None), 0, -1)) == before


def test_a_full_redis_refuses_the_pop_with_out_of_memory_removing_nothing(
    admin: redis.Redis, server: RedisProc
) -> None:
    """maxmemory reached (noeviction): OutOfMemory, distinct from unreachable, and no entry removed."""
    publish_pool(admin, PREFIX, POOL)
    fill(admin, PREFIX, POOL, 3)
    with PoolClient.from_url(server.url, prefix=PREFIX) as client:
        client.pop(POOL)
        admin.config_set("maxmemory", 1)
        try:
            with pytest.raises(OutOfMemory, match="out of memory"):
                client.pop(POOL)
            assert admin.zcard(KEYS.queue(None)) == 2
        finally:
            admin.config_set("maxmemory", 0)


def test_the_documented_starter_acl_pops_and_waits(admin: redis.Redis, server: RedisProc) -> None:
    """The README's pop-only starter ACL: pop, wait for an entry, and a miss, with nothing more granted."""
    publish_pool(admin, PREFIX, POOL)
    fill(admin, PREFIX, POOL, 1)
    functions.load_library(admin)
    name = user(admin, "starter", [*CONNECTION, *STARTER_COMMANDS])
    with starter(server, name) as client:
        assert client.pop(POOL, min_ttl=10)
        with pytest.raises(PoolEmpty):
            client.pop(POOL, wait=0.2)


@pytest.mark.parametrize("probe", ["younger", "older"])
def test_the_documented_starter_acl_pops_under_an_effective_max_age_and_its_probes(
    admin: redis.Redis, server: RedisProc, probe: str
) -> None:
    """auto_max_age: the same starter ACL pops under a stored decision, every pop a probe (share 1)."""
    publish_pool(admin, PREFIX, POOL)
    [old] = fill(admin, PREFIX, POOL, 1, life=200)  # 70 s old: past an effective max_age of 30 s
    [young] = fill(admin, PREFIX, POOL, 1, life=260)
    functions.load_library(admin)
    keys = pool_keys(PREFIX, POOL)
    minute = int(admin.time()[0]) // 60
    decision = functions.freshen_call(
        keys,
        fingerprint=functions.text(admin.hget(keys.meta, "fingerprint")),
        minute=minute,
        max_age_ms=30_000,
        probe=probe,
        share=1.0,
        up_to_ms=90_000,
    )
    assert functions.execute(admin, decision) == b"STORED"
    name = user(admin, "prober", [*CONNECTION, *STARTER_COMMANDS])
    with starter(server, name) as client:
        # older: the youngest past 30 s within 90 s, then the young one; younger: the young one, then none
        expected = [old, young] if probe == "older" else [young]
        assert [client.pop(POOL, min_ttl=10).resource_id for _ in expected] == [e.resource_id for e in expected]
        with pytest.raises(PoolEmpty):
            client.pop(POOL)


def test_the_documented_starter_acl_with_its_budget_additions_takes_a_slot(
    admin: redis.Redis, server: RedisProc
) -> None:
    """The starter ACL plus what the README adds for start_slot, take() and budget(): a slot and a turn."""
    readme = README.read_text()
    found = re.search(r"add ((?:\+\S+ )+)for start_slot", readme)
    assert found, "the README names what start_slot needs"
    publish_pool(admin, PREFIX, POOL)
    fill(admin, PREFIX, POOL, 1)
    functions.load_library(admin)
    name = user(admin, "slotted", [*CONNECTION, *STARTER_COMMANDS, *found[1].split()])
    with starter(server, name) as client:
        with client.start_slot(POOL, min_ttl=10) as entry:
            assert entry.source == "pool"
        assert client.take(rate=10) >= 0


async def test_the_documented_daemon_acl_fills_every_pool(admin: redis.Redis, server: RedisProc) -> None:
    """The README's daemon ACL: a daemon logged in with it loads the library and fills both pools, no error."""
    name = user(admin, "daemon", [*CONNECTION, *DAEMON_COMMANDS])
    sim = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET).start()
    try:
        web = web_pool(3, auto_max_age=True)
        config = make_config(f"redis://{name}:pw@127.0.0.1:{server.port}/0", sim.url, web, rooms_pool(1))
        timing = dataclasses.replace(FAST, sample=0.05, history_step=0.2, freshen=0.05)
        with capture_logs() as logs:
            async with running(config, timing=timing):
                with PoolClient.from_url(server.url, prefix=PREFIX) as client:
                    await eventually(
                        lambda: client.stats("web").size == 3 and client.stats("rooms").size == 3, 20, "both pools full"
                    )
                    assert client.stats("web").state == "ok" and client.stats("rooms").state == "ok"
                    await eventually(lambda: admin.hget(pool_keys(PREFIX, "web").history, "last"), what="a sample")
                    meta = pool_keys(PREFIX, "web").meta
                    await eventually(lambda: admin.hget(meta, "fresh_minute"), what="a freshness decision")
        failed = [e for e in logs if e["log_level"] == "error"]
        assert failed == [], failed  # every job (sample, publish, heartbeat, observe, freshen) ran under this ACL
    finally:
        sim.stop()
