"""Replicas that disagree about a pool: the one whose config differs from the live owner's neither leases nor
stores for it (Redis itself refuses an add of another config identity), the pool shows state `conflict`
everywhere, and the replica takes the pool up again by itself once the owner stops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import structlog
from prometheus_client import generate_latest
from ridpool import PoolClient, cli, functions, stats
from ridpool.daemon.publish import meta_of
from ridpool.entry import Entry
from ridpool.errors import PoolEmpty
from ridpool.functions import AddResult
from ridpool.keys import pool_keys
from ridpool.meta import PoolMeta, publish
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, SECRET, eventually, make_config, running, web_pool
from tests.poolkit import make_entry, server_ms

OTHER_APPID = "fedcba9876543210fedcba9876543210"
WEB = pool_keys(PREFIX, "web")

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=3) as s:
        yield s


def _meta(appid: str) -> PoolMeta:
    return PoolMeta("web", appid, None, 5, 270.0, scene=1, label="web-{uuid}", uid="527841")


def _lease(r: redis.Redis) -> functions.Lease:
    call = functions.reserve_call(
        WEB, [functions.Want(None, 5, 0, 1)], cap=4, lease_ms=5000, token_base="x:1", pops_seen=0, uid_candidates=[]
    )
    reserved = functions.parse_reserve(functions.execute(r, call))
    return reserved.slots[0].leases[0]


def _add(r: redis.Redis, entry: Entry, lease: functions.Lease, identity: str) -> AddResult:
    call = functions.add_call(WEB, entry, queue_cname=None, lease=lease.token, acquired=True, identity=identity)
    return functions.parse_add(functions.execute(r, call))


def _status_check(capsys: pytest.CaptureFixture[str], redis_url: str) -> tuple[int, str]:
    code = cli.main(["status", "--redis-url", redis_url, "--prefix", PREFIX, "--check"])
    out = capsys.readouterr()
    return code, out.out + out.err


# -- the functions ----------------------------------------------------------------------------------------------


def test_an_add_acquired_under_another_identity_is_refused_and_its_lease_released(r: redis.Redis) -> None:
    """ridpool_add with an identity other than the published one: CONFLICT, nothing stored, the lease given back."""
    functions.load_library(r)
    publish(r, WEB, _meta(APPID))
    mine, theirs = _meta(APPID).identity(), _meta(OTHER_APPID).identity()
    assert mine != theirs
    lease = _lease(r)
    assert _add(r, make_entry(r, "web"), lease, theirs) is AddResult.CONFLICT
    assert r.zcard(WEB.queue(None)) == 0 and r.zcard(WEB.inflight) == 0
    assert _add(r, make_entry(r, "web"), _lease(r), mine) is AddResult.ADDED


def test_an_add_for_a_pool_nobody_publishes_is_refused_when_it_names_its_identity(r: redis.Redis) -> None:
    """No publication (a Redis that lost it): an add that names its identity is not stored until one stands."""
    functions.load_library(r)
    call = functions.add_call(WEB, make_entry(r, "web"), queue_cname=None, identity=_meta(APPID).identity())
    assert functions.parse_add(functions.execute(r, call)) is AddResult.CONFLICT
    assert r.zcard(WEB.queue(None)) == 0


def test_entries_of_an_identity_no_longer_published_are_dropped_never_popped(r: redis.Redis) -> None:
    """The owner changes (another appid published): the queue filled under the old identity is dropped at the
    next pop, which misses instead of returning an ID for the other App ID."""
    functions.load_library(r)
    publish(r, WEB, _meta(APPID))
    for _ in range(3):
        assert _add(r, make_entry(r, "web"), _lease(r), _meta(APPID).identity()) is AddResult.ADDED
    publish(r, WEB, _meta(OTHER_APPID))  # no live owner holds it: the new config is published
    with PoolClient(r, prefix=PREFIX) as client, pytest.raises(PoolEmpty):
        client.pop("web")
    assert int(r.hget(WEB.stats, "dropped") or 0) == 3


def test_a_resize_keeps_the_identity_and_the_entries(r: redis.Redis) -> None:
    """Size, max_age and channels are not what an entry is: publishing a new size keeps the stored entries."""
    functions.load_library(r)
    publish(r, WEB, _meta(APPID))
    assert _add(r, make_entry(r, "web"), _lease(r), _meta(APPID).identity()) is AddResult.ADDED
    bigger = PoolMeta("web", APPID, None, 50, 200.0, scene=1, label="web-{uuid}", uid="527841")
    assert bigger.identity() == _meta(APPID).identity() and bigger.fingerprint() != _meta(APPID).fingerprint()
    publish(r, WEB, bigger)
    with PoolClient(r, prefix=PREFIX) as client:
        assert client.pop("web").appid == APPID


def test_the_daemon_publishes_the_identity_its_adds_carry(redis_url: str, sim: Simulator) -> None:
    """What meta_of publishes as `identity` is what the refill's adds name (one derivation for both)."""
    pool = make_config(redis_url, sim.url, web_pool(1)).pools[0]
    assert meta_of(pool).fields()["identity"] == meta_of(pool).identity()


# -- two daemons -----------------------------------------------------------------------------------------------


async def _pop_all(client: PoolClient, sim: Simulator, seconds: float) -> list[str]:
    """Pop for `seconds`; every ID must start at the simulator for the appid it says; returns the appids."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        try:
            entry = client.pop("web")
        except PoolEmpty:
            await asyncio.sleep(0.05)
            continue
        assert sim.check(entry.resource_id, appid=entry.appid, cname=entry.cname, uid=entry.uid) is None
        seen.append(entry.appid)
    return seen


async def test_a_replica_with_another_appid_never_fills_the_pool_and_status_says_conflict(
    r: redis.Redis, redis_url: str, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two daemons, two appids for pool web: every pop is the owner's App ID; stats(), status --json, /metrics,
    /healthz and `status --check` (exit 13, naming it) say conflict; stopping the other one mends it."""
    owner = make_config(redis_url, sim.url, web_pool(3), rate_limit=10)
    other = make_config(redis_url, sim.url, web_pool(3, appid=OTHER_APPID), rate_limit=10)
    with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
        async with running(owner, name="a"):
            await eventually(lambda: client.stats("web").size == 3, 20, "the owner fills web")
            with structlog.testing.capture_logs() as logs:
                async with running(other, name="b") as [b]:
                    await eventually(lambda: client.stats("web").state == "conflict", 10, "state conflict")
                    popped = await _pop_all(client, sim, 3.0)
                    code, said = _status_check(capsys, redis_url)
                    cli.main(["status", "--redis-url", redis_url, "--prefix", PREFIX, "--json"])
                    as_json = capsys.readouterr().out
                    await b.observe()
                    metrics = generate_latest(b.metrics.registry).decode()
                    health = b.health_status()
                    stats = client.stats("web")
            assert popped and set(popped) == {APPID}, f"pops of the other App ID: {popped.count(OTHER_APPID)}"
            assert code == cli.EXIT_UNHEALTHY == 13
            assert "pool 'web' is in conflict" in said and "b0" in said and "appid" in said
            assert '"state": "conflict"' in as_json
            assert 'ridpool_pool_state{pool="web",state="conflict"} 1.0' in metrics
            assert health[0] and "conflict: pools web" in health[1]
            assert "appid" in stats.conflict and stats.state == "conflict"
            assert next(e for e in logs if e["event"] == "pool.owner_conflict")["differs"] == ["appid"]
            # The other replica stopped: the conflict is over, the pool serves on.
            await eventually(lambda: client.stats("web").state == "ok", 5, "state ok again")
            assert _status_check(capsys, redis_url)[0] == cli.EXIT_OK
            assert set(await _pop_all(client, sim, 1.0)) <= {APPID}
            await eventually(lambda: client.stats("web").size == 3, 20, "web refilled")


async def test_when_the_owner_stops_the_other_replica_takes_the_pool_up_and_serves_only_its_own(
    r: redis.Redis, redis_url: str, sim: Simulator
) -> None:
    """Owner stopped: the replica that was apart publishes its config within a publish interval, the owner's
    entries of the other App ID are dropped, and every pop from then on is its own App ID."""
    owner = make_config(redis_url, sim.url, web_pool(3), rate_limit=10)
    other = make_config(redis_url, sim.url, web_pool(3, appid=OTHER_APPID), rate_limit=10)
    with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
        async with running(other, name="b"):
            async with running(owner, name="a"):
                await eventually(lambda: client.stats("web").size == 3, 20, "the owner fills web")
                await eventually(lambda: client.stats("web").state == "conflict", 10, "state conflict")
            assert r.hget(WEB.meta, "owner") in (b"a0", b"b0")
            await eventually(lambda: r.hget(WEB.meta, "appid") == OTHER_APPID.encode(), 5, "b takes over")
            popped = await _pop_all(client, sim, 3.0)
            assert popped and set(popped) == {OTHER_APPID}
            assert client.stats("web").state == "ok"


async def test_a_second_replica_acquires_nothing_for_a_pool_it_disagrees_on_and_serves_the_others(
    redis_url: str, sim: Simulator
) -> None:
    """The disagreeing replica checks before its first acquire: the simulator never sees its App ID, while a pool
    both agree on is filled (by either)."""
    rooms = {"name": "rooms", "appid": APPID, "cnames": ["room-1"], "uid": "900001", "size": 2}
    owner = make_config(redis_url, sim.url, web_pool(2), rate_limit=10)
    # Larger too: a replica that did not check would lease what it thinks the pool lacks.
    other = make_config(redis_url, sim.url, web_pool(4, appid=OTHER_APPID), rooms, rate_limit=10)
    with PoolClient.from_url(redis_url, prefix=PREFIX) as client:
        async with running(owner, name="a"):
            await eventually(lambda: client.stats("web").size == 2, 20, "the owner fills web")
            async with running(other, name="b"):
                await eventually(lambda: client.stats("rooms").size == 2, 20, "b fills rooms")
                await eventually(lambda: client.stats("web").state == "conflict", 10, "state conflict")
            assert client.stats("rooms").state == "ok"
    issued = [rec.appid for rec in sim._ledger.values()]  # what the simulator acquired, for whom
    assert OTHER_APPID not in issued and issued


def test_a_conflict_record_lapses_when_its_replica_dies_and_goes_when_withdrawn(r: redis.Redis) -> None:
    """A record holds live_ms (its key expires with it), then no longer counts; withdrawing removes it at once."""
    functions.load_library(r)
    publish(r, WEB, _meta(APPID))
    call = functions.conflict_call(WEB, replica="dead", live_ms=60_000, message="pool 'web': differs")
    assert functions.execute(r, call) == 1
    with PoolClient(r, prefix=PREFIX) as client:
        assert client.stats("web").state == "conflict"
    raw, now = r.hgetall(WEB.conflicts), server_ms(r)
    assert stats.conflicts(raw, now) == "pool 'web': differs" and stats.conflicts(raw, now + 60_001) == ""
    assert 0 < r.pttl(WEB.conflicts) <= 60_000
    assert functions.execute(r, functions.conflict_call(WEB, replica="dead", live_ms=0)) == 0
    assert not r.exists(WEB.conflicts)
