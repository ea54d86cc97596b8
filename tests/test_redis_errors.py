"""Errors that say what they are and stay in their pool; eviction refused; library versions; one owner per pool.

Against the session's real redis-server, the CLI run as a process where its exit code is the contract.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import structlog
from ridpool import LibraryMismatch, PoolClient, UnknownPool, functions
from ridpool.daemon.service import eviction_problem
from ridpool.errors import EvictionRisk
from ridpool.keys import encode_cname, pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import (
    CREDENTIALS,
    CUSTOMER_ID,
    FAST,
    SECRET,
    eventually,
    make_config,
    rooms_pool,
    running,
    web_pool,
)
from tests.poolkit import fill, make_entry, publish_pool
from tests.test_cli import ridpool

WEB = pool_keys(PREFIX, "web")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET).start()
    yield simulator
    simulator.stop()


# -- distinct errors, distinct exit codes ---------------------------------------------------------------------


def test_the_cli_names_each_redis_error_with_its_own_exit_code(r: redis.Redis, redis_url: str) -> None:
    """Wrong type 7, permission 6, out of memory 8, newer library 10, unreachable 5: each with its own words."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 2)
    pop = ("pop", "web", "--prefix", PREFIX)

    r.hset(WEB.meta, "e:", "x")  # (any pop first drops the queue; these cases need no entries)
    r.delete(WEB.stats)
    r.set(WEB.stats, "damaged")
    done = ridpool(*pop, "--redis-url", redis_url)
    assert (done.returncode, "wrong type" in done.stderr, "Traceback" in done.stderr) == (7, True, False)
    status = ridpool("status", "--redis-url", redis_url, "--prefix", PREFIX)
    assert status.returncode == 0 and "error" in status.stdout and "Traceback" not in status.stderr
    r.delete(WEB.stats)

    r.acl_setuser("nofcall", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-fcall"])
    port = r.connection_pool.connection_kwargs["port"]
    done = ridpool(*pop, "--redis-url", f"redis://nofcall:pw@127.0.0.1:{port}/0")
    r.acl_deluser("nofcall")
    assert (done.returncode, "not allowed" in done.stderr) == (6, True)

    r.config_set("maxmemory", 1)
    try:
        done = ridpool(*pop, "--redis-url", redis_url)
    finally:
        r.config_set("maxmemory", 0)
    assert (done.returncode, "out of memory" in done.stderr) == (8, True)

    r.function_load(with_version("99"), True)
    done = ridpool(*pop, "--redis-url", redis_url)
    assert (done.returncode, "newer than this client" in done.stderr) == (10, True)

    done = ridpool(*pop, "--redis-url", "redis://127.0.0.1:1/0")
    assert (done.returncode, "unavailable" in done.stderr) == (5, True)


async def test_a_damaged_pool_is_marked_in_error_and_the_others_keep_filling(
    r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """web's lease set holds a string: web is in error with the reason; rooms fills to its target; no pause."""
    r.set(WEB.inflight, "damaged")
    config = make_config(redis_url, sim.url, web_pool(3), rooms_pool(2))
    with structlog.testing.capture_logs() as logs:
        async with running(config):
            with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
                await eventually(lambda: client.stats("rooms").size == 6, 20, "rooms full")
                web = client.stats("web")
    assert web.state == "error" and "WRONGTYPE" in web.last_error
    events = [e["event"] for e in logs]
    assert events.count("refill.pool_damaged") == 1  # logged once, not every tick
    assert "redis.unavailable" not in events
    assert all(e.get("pool") for e in logs if e["event"] == "refill.pool_damaged")


def test_channel_names_cannot_make_two_keys_collide(r: redis.Redis, redis_url: str) -> None:
    """cnames "room" and "room:ready": distinct queue and wake-up keys; each pop gets its own channel's entry."""
    keys = pool_keys(PREFIX, "rooms")
    names = ("room", "room:ready", "room%3Aready")
    assert len({keys.queue(n) for n in names} | {keys.ready(n) for n in names}) == 6
    assert encode_cname("a:b%c") == "a%3Ab%25c"
    publish_pool(r, PREFIX, "rooms", cnames=names)
    for name in names:
        fill(r, PREFIX, "rooms", 1, cname=name, named=True)
    with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
        assert [client.pop("rooms", cname=n).cname for n in names] == list(names)


# -- FCALL validates min_ttl; wake-up tokens stay bounded by the entries -------------------------------------


@pytest.mark.parametrize(("min_ttl_ms", "valid"), [(0, True), (299999, True), (300000, False), (-1, False)])
def test_fcall_validates_min_ttl_like_the_python_client(r: redis.Redis, min_ttl_ms: int, valid: bool) -> None:
    """0 <= min_ttl_ms < 300000 in FCALL too; outside it BAD_ARGUMENT, and no miss is counted."""
    publish_pool(r, PREFIX, "web")
    functions.load_library(r)
    keys = (WEB.meta, WEB.stats, WEB.queue(None))
    if valid:
        assert r.fcall("ridpool_pop", 3, *keys, "", min_ttl_ms, "1") is None
    else:
        with pytest.raises(redis.ResponseError, match="BAD_ARGUMENT"):
            r.fcall("ridpool_pop", 3, *keys, "", min_ttl_ms, "1")
        assert r.hget(WEB.stats, "misses") is None


def test_wake_up_tokens_never_outnumber_queued_entries(r: redis.Redis) -> None:
    """20 adds, pops without BLPOP, more adds: the ready list never holds more tokens than the queue entries."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 20)
    assert r.llen(WEB.ready(None)) <= r.zcard(WEB.queue(None)) == 20
    with PoolClient(r, prefix=PREFIX) as client:
        for _ in range(18):
            client.pop("web")
    fill(r, PREFIX, "web", 1)
    assert r.llen(WEB.ready(None)) <= r.zcard(WEB.queue(None)) == 3


def test_the_documented_wait_loop_for_other_languages(r: redis.Redis) -> None:
    """The README's loop (BLPOP the ready list, then FCALL; nil means loop until the deadline) gets an entry
    even after stale tokens, and never blocks past its deadline."""
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "web", 1, life=0.3)  # a token, and an entry that will have died by the time it is used
    entry = make_entry(r, "web")
    keys = (WEB.meta, WEB.stats, WEB.queue(None))

    def wait_pop(timeout_s: float) -> object:
        deadline = time.monotonic() + timeout_s
        while True:
            reply = r.fcall("ridpool_pop", 3, *keys, "", 1000, "0")
            now = time.monotonic()
            if reply is not None or now >= deadline:
                return reply
            r.blpop([WEB.ready(None)], timeout=max(0.01, min(1.0, deadline - now)))

    with PoolClient(r, prefix=PREFIX):
        assert wait_pop(0.6) is None  # the stale token woke the loop for nothing; it went on until the deadline
        functions.execute(r, functions.add_call(WEB, entry, queue_cname=None))
        assert wait_pop(2.0) is not None


# -- eviction -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "maxmemory", "risky"),
    [
        ("noeviction", 100, False),
        ("allkeys-lru", 0, False),
        ("allkeys-lru", 100, True),
        ("volatile-lru", 100, True),
        ("volatile-ttl", 100, True),
    ],
)
def test_eviction_problem_table(policy: str, maxmemory: int, risky: bool) -> None:
    """Only noeviction, or no maxmemory at all, is safe; the message names maxmemory-policy and what to set."""
    problem = eviction_problem({"maxmemory_policy": policy, "maxmemory": maxmemory})
    assert (problem is not None) == risky
    if problem:
        assert "maxmemory-policy" in problem and "noeviction" in problem


def test_ridpool_run_refuses_a_redis_that_may_evict(r: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """maxmemory-policy allkeys-lru with maxmemory set: `ridpool run` exits 11 naming maxmemory-policy."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_url}"\nkey_prefix = "{PREFIX}"\n[agora]\nbase_url = "http://127.0.0.1:1"\n'
        f'[[pools]]\nname = "web"\nappid = "{"0" * 32}"\ncname = "web-{{uuid}}"\nscene = 1\nuid = "1"\n'
    )
    r.config_set("maxmemory-policy", "allkeys-lru")
    r.config_set("maxmemory", "1gb")
    try:
        done = ridpool("run", "-c", str(config), env={"AGORA_CUSTOMER_ID": "c", "AGORA_CUSTOMER_SECRET": SECRET})
    finally:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 0)
    assert done.returncode == 11, done.stderr
    assert "maxmemory-policy" in done.stderr and "Traceback" not in done.stderr


async def test_allow_eviction_runs_and_warns_in_status(r: redis.Redis, redis_url: str, sim: Simulator) -> None:
    """[redis] allow_eviction = true: the daemon runs and fills; every status repeats the warning."""
    r.config_set("maxmemory-policy", "allkeys-lru")
    r.config_set("maxmemory", "1gb")
    try:
        base = make_config(redis_url, sim.url, web_pool(2))
        risky = base.model_copy(update={"redis": base.redis.model_copy(update={"allow_eviction": True})})
        with pytest.raises(EvictionRisk, match="maxmemory-policy"):
            async with running(base):
                pass
        async with running(risky):
            with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
                await eventually(lambda: client.stats("web").size == 2, 20, "web full")
                await eventually(lambda: "maxmemory-policy" in _status(redis_url), 5, "the warning in status")
    finally:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 0)


async def test_eviction_turned_on_while_running_is_reported_at_the_next_heartbeat(
    r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """A running daemon whose Redis starts to allow eviction: redis.eviction_risk (error) and a status warning."""
    with structlog.testing.capture_logs() as logs:
        async with running(make_config(redis_url, sim.url, web_pool(1))):
            await eventually(lambda: "live replicas: 1" in _status(redis_url), 10, "the daemon running")
            r.config_set("maxmemory-policy", "volatile-ttl")
            r.config_set("maxmemory", "1gb")
            try:
                await eventually(lambda: "maxmemory-policy" in _status(redis_url), 10, "the warning in status")
            finally:
                r.config_set("maxmemory-policy", "noeviction")
                r.config_set("maxmemory", 0)
            await eventually(lambda: "maxmemory-policy" not in _status(redis_url), 10, "the warning gone")
    risks = [e for e in logs if e["event"] == "redis.eviction_risk"]
    assert risks and risks[0]["log_level"] == "error"


def _status(redis_url: str) -> str:
    return ridpool("status", "--redis-url", redis_url, "--prefix", PREFIX).stdout


# -- library versions -----------------------------------------------------------------------------------------


def with_version(version: str) -> str:
    """The library as if it were another version."""
    mine = f"local LIBRARY_VERSION = '{functions.LIBRARY_VERSION}'"
    assert mine in functions.LIBRARY
    return functions.LIBRARY.replace(mine, f"local LIBRARY_VERSION = '{version}'")


CURRENT = str(functions.LIBRARY_VERSION)


@pytest.mark.parametrize(("held", "outcome"), [(None, "loaded"), ("1", "loaded"), (CURRENT, "kept"), ("99", "refused")])
def test_the_library_version_is_checked_once_per_client(r: redis.Redis, held: str | None, outcome: str) -> None:
    """Missing or older: loaded; the same: kept; newer: LibraryMismatch, and the newer copy left in place."""
    publish_pool(r, PREFIX, "web")
    if held is None:
        r.function_flush()
    else:
        r.function_load(with_version(held), True)
    r.config_resetstat()
    with PoolClient(redis.Redis(**_kwargs(r)), prefix=PREFIX) as client:
        if outcome == "refused":
            with pytest.raises(LibraryMismatch, match="version 99"):
                client.pop("web", wait=0)
            assert r.fcall("ridpool_version", 0) == b"99"
            return
        for _ in range(3):
            client.stats("web")
            with pytest.raises(Exception, match="no entry"):
                client.pop("web")
    assert r.fcall("ridpool_version", 0) == CURRENT.encode()
    calls = r.info("commandstats")
    assert calls.get("cmdstat_function|load", {}).get("calls", 0) == (1 if outcome == "loaded" else 0)
    # three pops, three counts (stats reads its queues with ridpool_count), one version check, the check above
    assert calls["cmdstat_fcall"]["calls"] == 3 + 3 + 1 + 1


def _kwargs(r: redis.Redis) -> dict[str, object]:
    kwargs = r.connection_pool.connection_kwargs
    return {"host": kwargs["host"], "port": kwargs["port"]}


# -- one owner per pool; bounded reports -----------------------------------------------------------------------


async def test_a_replica_with_another_config_for_a_pool_says_so_and_does_not_overwrite(
    r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """Two replicas, two sizes for pool web: the second logs pool.owner_conflict, status shows it, meta stands."""
    first = make_config(redis_url, sim.url, web_pool(2))
    second = make_config(redis_url, sim.url, web_pool(4))
    async with running(first, name="a"):
        await eventually(lambda: r.hget(WEB.meta, "size") == b"2", 10, "first published")
        with structlog.testing.capture_logs() as logs:
            async with running(second, name="b"):
                await eventually(lambda: "different configuration" in _status(redis_url), 10, "status warning")
        assert r.hget(WEB.meta, "size") == b"2" and r.hget(WEB.meta, "owner") == b"a0"
    # The first replica stopped (a config change and a restart): a successor takes the pool over at once.
    async with running(second, name="c"):
        await eventually(lambda: r.hget(WEB.meta, "size") == b"4", 5, "the successor's config published")
    conflicts = [e for e in logs if e["event"] == "pool.owner_conflict"]
    assert conflicts and conflicts[0]["pool"] == "web" and conflicts[0]["log_level"] == "error"


async def test_replicas_with_the_same_config_share_a_pool_without_conflict(
    r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """Same config on two replicas: both publish, no conflict event."""
    config = make_config(redis_url, sim.url, web_pool(2))
    with structlog.testing.capture_logs() as logs:
        async with running(config, replicas=2):
            with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
                await eventually(lambda: client.stats("web").size == 2, 20, "web full")
    assert not [e for e in logs if e["event"] == "pool.owner_conflict"]
    assert FAST and CREDENTIALS  # the shared rig, as used by running()


def test_report_takes_only_published_pools_and_bounded_codes(r: redis.Redis) -> None:
    """report() on an unpublished pool: UnknownPool; 100 codes and junk: bounded fields, the rest as 'other'."""
    with PoolClient(r, prefix=PREFIX) as client:
        entry = make_entry(r, "web")
        with pytest.raises(UnknownPool):
            client.report(entry, ok=True)
        publish_pool(r, PREFIX, "web")
        for code in [*range(100), "x" * 1000, "1e9"]:
            client.report(entry, ok=False, code=code)
        client.report(entry, ok=True)
    fields = r.hgetall(WEB.starts)
    codes = [f for f in fields if f.startswith(b"code:")]
    assert len(fields) <= 64 + 1 + 22 and b"code:other" in codes  # 64, 'other', the 22 age buckets at most
    assert sum(int(fields[f]) for f in codes) == 102
    assert 0 < r.pttl(WEB.starts) <= 7 * 24 * 3600 * 1000
