"""auto_max_age end to end: reports kept per minute by ridpool_report, the effective max_age stored by the daemon's
per-minute job, honoured by the pop (probes too), planned for by the refill, shown by status and /metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis
from ridpool import AsyncPoolClient, PoolClient, PoolEmpty, ages, functions, status
from ridpool.daemon import freshness, planview
from ridpool.daemon.config import parse_config
from ridpool.daemon.metrics import Metrics, Snapshot
from ridpool.entry import Entry
from ridpool.errors import ConfigError
from ridpool.keys import pool_keys
from ridpool.testing import Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CUSTOMER_ID, FAST, SECRET, eventually, make_config, running, web_pool
from tests.poolkit import fill, publish_pool, server_ms

pytestmark = pytest.mark.integration
WEB = pool_keys(PREFIX, "web")
FRESHENING = dataclasses.replace(FAST, freshen=0.05)


def fingerprint(r: redis.Redis) -> str:
    return functions.text(r.hget(WEB.meta, "fingerprint"))


def store(r: redis.Redis, max_age: float, *, probe: str = "", share: float = 0.0, up_to: float = 0, **kw: Any) -> str:
    """A decision as the daemon stores it, for the minute now."""
    call = functions.freshen_call(
        WEB,
        fingerprint=fingerprint(r),
        minute=server_ms(r) // 60_000,
        max_age_ms=round(max_age * 1000),
        probe=probe,
        share=share,
        up_to_ms=round(up_to * 1000),
        **kw,
    )
    return functions.parse_freshen(functions.execute(r, call))


def aged(r: redis.Redis, *ages_s: float) -> list[Entry]:
    """Entries of the web pool (max_age 270) acquired `ages_s` seconds ago, oldest first."""
    out = []
    for age in ages_s:
        [entry] = fill(r, PREFIX, "web", 1, life=270 - age)
        out.append(entry)
    return out


# -- reports per minute ------------------------------------------------------------------------------------


def test_reports_are_kept_per_minute_in_the_buckets_python_reads(r: redis.Redis, client: PoolClient) -> None:
    """Each report lands in its minute and the bucket of EDGES its age falls in (the Lua and Python edges are one),
    beside the counters since the hash was made; the last hour's figures sum the minutes."""
    publish_pool(r, PREFIX, "web")
    [entry] = fill(r, PREFIX, "web", 1)
    for age_s, ok in [(0.5, True), (3, False), (25, True), (65, False), (65, False), (299, True), (400, False)]:
        client.report(dataclasses.replace(entry, sent_at_ms=server_ms(r) - round(age_s * 1000)), ok=ok, code=433)
    raw = {functions.text(k): functions.text(v) for k, v in r.hgetall(WEB.starts).items()}
    [(minute, tallies)] = ages.per_minute(raw).items()
    assert minute in (server_ms(r) // 60_000, server_ms(r) // 60_000 - 1)
    assert tallies == {
        0: ages.Tally(ok=1),
        2: ages.Tally(failed=1),
        20: ages.Tally(ok=1),
        60: ages.Tally(failed=2),
        270: ages.Tally(ok=1, failed=1),  # 300 s and more count in the last bucket
    }
    s = client.stats("web")
    assert s.starts == {
        "ok:0-2": 1,
        "failed:2-5": 1,
        "ok:20-30": 1,
        "failed:60-90": 2,
        "ok:270-300": 1,
        "failed:270-300": 1,
        "code:433": 4,
    }
    assert s.starts_hour["60-90"] == ages.Tally(failed=2) and list(s.starts_hour) == [
        "0-2",
        "2-5",
        "20-30",
        "60-90",
        "270-300",
    ]


def test_minutes_leaving_the_window_are_forgotten_as_a_new_minute_begins(r: redis.Redis, client: PoolClient) -> None:
    """Bounded: the first report of a minute deletes the minutes older than the kept window (61), not the others."""
    publish_pool(r, PREFIX, "web")
    [entry] = fill(r, PREFIX, "web", 1)
    now = server_ms(r) // 60_000
    r.hset(WEB.starts, mapping={"last": now - 1, f"{now - 61}:ok:0": 5, f"{now - 30}:failed:60": 2, "ok:0-2": 5})
    client.report(entry, ok=True)
    raw = {functions.text(k): functions.text(v) for k, v in r.hgetall(WEB.starts).items()}
    assert f"{now - 61}:ok:0" not in raw and raw[f"{now - 30}:failed:60"] == "2"
    assert raw["ok:0-2"] == "6" and int(raw["last"]) >= now


# -- the pop honours the stored decision --------------------------------------------------------------------


def test_pops_offer_only_entries_younger_than_the_effective_max_age(r: redis.Redis, client: PoolClient) -> None:
    """Stored at 30 s: the 70 s old entry is passed over (oldest first among the young), then a miss though it is
    still queued; lapsed or cleared, pops offer up to max_age again."""
    publish_pool(r, PREFIX, "web")
    old, middle, young = aged(r, 70, 20, 5)
    assert store(r, 30) == "STORED"
    assert client.pop("web").resource_id == middle.resource_id
    assert client.pop("web").resource_id == young.resource_id
    with pytest.raises(PoolEmpty):
        client.pop("web")
    assert client.stats("web").effective_max_age == 30
    assert store(r, 30) == "DECIDED"  # one decision a minute
    functions.execute(r, functions.freshen_call(WEB, fingerprint=fingerprint(r), minute=0, max_age_ms=None))
    assert client.stats("web").effective_max_age == 270
    assert client.pop("web").resource_id == old.resource_id


def test_a_decision_not_stored_again_lapses(r: redis.Redis, client: PoolClient) -> None:
    """hold_ms: when no daemon stores the decision again, pops go back to the configured max_age by themselves."""
    publish_pool(r, PREFIX, "web")
    [old] = aged(r, 70)
    assert store(r, 30, hold_ms=1) == "STORED"
    now = server_ms(r)
    while server_ms(r) <= now + 1:  # a millisecond of server time, not a sleep to let things settle
        pass
    assert client.pop("web").resource_id == old.resource_id


@pytest.mark.parametrize(
    ("probe", "up_to", "expected"),
    [("younger", 0, 2), ("older", 90, 1), ("older", 60, 1), ("older", 45, 2)],
)
def test_the_probes_share_of_pops_takes_the_youngest_or_older_entries(
    r: redis.Redis, client: PoolClient, probe: str, up_to: float, expected: int
) -> None:
    """Share 1: every pop probes. 'younger' takes the youngest entry; 'older' the youngest past the effective
    value (30 s) within up_to, or, with none there, the oldest young enough."""
    publish_pool(r, PREFIX, "web")
    entries = aged(r, 80, 50, 10)
    assert store(r, 30, probe=probe, share=1.0, up_to=up_to) == "STORED"
    assert client.pop("web").resource_id == entries[expected].resource_id


def test_a_replica_of_another_configuration_stores_nothing(r: redis.Redis) -> None:
    """ridpool_freshen checks the published fingerprint: CONFLICT, and the meta hash holds no decision."""
    publish_pool(r, PREFIX, "web")
    call = functions.freshen_call(WEB, fingerprint="other", minute=1, max_age_ms=30_000)
    assert functions.parse_freshen(functions.execute(r, call)) == "CONFLICT"
    assert r.hget(WEB.meta, "fresh_max_age_ms") is None


def test_the_refill_counts_entries_past_the_effective_max_age_as_not_live(r: redis.Redis) -> None:
    """ridpool_reserve and ridpool_sweep with stale_ms: an entry older than the effective value is not live (the
    refill acquires a young one for it), nor the oldest."""
    publish_pool(r, PREFIX, "web")
    _, young = aged(r, 70, 5)
    stale = 270_000 - 30_000
    want = [functions.Want(None, 2, 0, 2)]
    reserved = functions.parse_reserve(
        functions.execute(r, functions.reserve_call(WEB, want, cap=5, lease_ms=1000, token_base="t", stale_ms=stale))
    )
    assert reserved.slots[0].live == 1 and len(reserved.slots[0].leases) == 1
    swept = functions.parse_sweep(functions.execute(r, functions.sweep_call(WEB, [None], stale_ms=stale)))
    assert swept.states[0].live == 1 and swept.states[0].oldest_expires_at_ms == young.expires_at_ms


# -- the daemon decides, stores, plans, shows ---------------------------------------------------------------


def recorded(r: redis.Redis, history: dict[int, dict[int, ages.Tally]]) -> None:
    """Per-minute reports written as ridpool_report writes them (minutes relative to now)."""
    now = server_ms(r) // 60_000
    fields: dict[str, int] = {"last": now}
    for back, tallies in history.items():
        for edge, t in tallies.items():
            fields[f"{now - back}:ok:{edge}"] = t.ok
            fields[f"{now - back}:failed:{edge}"] = t.failed
    r.hset(WEB.starts, mapping=fields)


@pytest.fixture
def sim() -> Any:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=11) as s:
        yield s


async def test_the_daemon_drops_max_age_on_evidence_and_every_view_shows_it(
    redis_url: str, sim: Simulator, r: redis.Redis, aclient: AsyncPoolClient
) -> None:
    """Old IDs failing 30% against clean young ones: the job stores the lower value once (freshness.changed with
    the figures), pops honour it, the refill plans with it, status and /metrics show it."""
    history = {1: {0: ages.Tally(ok=40), 90: ages.Tally(ok=28, failed=12), 120: ages.Tally(ok=28, failed=12)}}
    recorded(r, history)
    pool = web_pool(2, auto_max_age=True, min_max_age=20)
    config = make_config(redis_url, sim.url, pool)
    minute = server_ms(r) // 60_000
    expected = freshness.decide(
        270,
        ages.per_minute({k.decode(): v.decode() for k, v in r.hgetall(WEB.starts).items()}),
        now_minute=minute,
        policy=freshness.Policy.of(config.pools[0]),
        since=0,
    )
    assert expected.changed and expected.max_age < 270
    with capture_logs() as logs:
        async with running(config, replicas=2, timing=FRESHENING) as daemons:

            async def stored() -> bool:
                return (await aclient.stats("web")).effective_max_age == expected.max_age

            await eventually(stored, what="the effective max_age in the meta hash")
            await eventually(
                lambda: all(d.refiller.max_age_ms["web"] == expected.max_age * 1000 for d in daemons),
                what="both replicas planning with it",
            )
            shown = await aclient.stats("web")
    changed = [e for e in logs if e["event"] == "freshness.changed"]
    assert len(changed) == 1 and changed[0]["max_age"] == expected.max_age and changed[0]["previous"] == 270
    assert changed[0]["older_failed"] == expected.older.failed and changed[0]["pool"] == "web"
    body = status.as_json(status.Status([shown], []))["pools"][0]
    assert body["effectiveMaxAge"] == expected.max_age and body["maxAge"] == 270
    assert body["freshness"]["reason"] == expected.reason
    assert body["startsLastHour"]["90-120"] == {"ok": 28, "failed": 12, "failureRate": 0.3}
    line = status.freshness_line(shown)
    assert line.startswith(f"web: max_age {expected.max_age:g}s of 270s") and "90-120 12/40" in line
    metrics = Metrics()
    metrics.snapshot = Snapshot((shown,), reached=True)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in metrics.registry.collect() for s in f.samples
    }
    assert samples[("ridpool_pool_max_age_seconds", (("pool", "web"),))] == expected.max_age
    assert samples[("ridpool_starts_total", (("age", "90-120"), ("outcome", "failed"), ("pool", "web")))] == 0
    assert samples[("ridpool_starts_total", (("age", "0-2"), ("outcome", "ok"), ("pool", "web")))] == 0


async def test_off_by_default_a_leftover_decision_is_cleared_and_max_age_shown(
    redis_url: str, sim: Simulator, r: redis.Redis, aclient: AsyncPoolClient
) -> None:
    """auto_max_age false: a decision an earlier configuration left is removed, pops offer up to max_age, the
    metric shows max_age, and no freshness.changed is logged."""
    config = make_config(redis_url, sim.url, web_pool(1))
    with capture_logs() as logs:
        async with running(config, timing=FRESHENING):
            await eventually(lambda: r.hget(WEB.meta, "fingerprint") is not None, what="the pool published")
            assert store(r, 30) == "STORED"
        async with running(config, timing=FRESHENING, name="again"):
            await eventually(lambda: r.hget(WEB.meta, "fresh_max_age_ms") is None, what="the decision cleared")
            shown = await aclient.stats("web")
    assert shown.freshness is None and shown.effective_max_age == 270
    assert not [e for e in logs if e["event"] == "freshness.changed"]
    metrics = Metrics()
    metrics.snapshot = Snapshot((shown,), reached=True)
    samples = {(s.name, s.labels.get("pool")): s.value for f in metrics.registry.collect() for s in f.samples}
    assert samples[("ridpool_pool_max_age_seconds", "web")] == 270


def test_check_config_judges_an_auto_max_age_pool_at_its_floor() -> None:
    """Feasibility at min_max_age: a standing size the budget renews at 270 s but not at 20 s is refused."""
    table = {
        "redis": {"url": "redis://localhost:6379"},
        "agora": {"base_url": "http://localhost:1", "rate_limit": 10},
        "pools": [
            {"name": "web", "appid": APPID, "cname": "web-{uuid}", "uid": "1", "scene": 1, "size": 400, "max_age": 270}
        ],
    }
    parse_config(table)
    table["pools"][0].update(auto_max_age=True, min_max_age=20)  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"standing sizes need 20\.0 acquires/s"):
        parse_config(table)


def test_the_plan_in_view_plans_with_the_stored_effective_max_age(r: redis.Redis, redis_url: str) -> None:
    """`ridpool plan` reading Redis plans an auto_max_age pool for the life the daemon plans with now."""
    publish_pool(r, PREFIX, "web")
    pool = web_pool(2, auto_max_age=True)
    config = make_config(redis_url, "http://127.0.0.1:1", pool)
    assert planview.read(r, config, minutes=1).max_age_ms == {"web": 270_000}
    assert store(r, 30) == "STORED"
    assert planview.read(r, config, minutes=1).max_age_ms == {"web": 30_000}
