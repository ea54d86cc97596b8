"""Bursts against a real redis-server and the simulator: refill at the budget, warm-ups, waste figures."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from ridpool import AsyncPoolClient, PoolEmpty, functions, stats
from ridpool.daemon import demand, planner
from ridpool.daemon.planner import Demand
from ridpool.daemon.service import Timing
from ridpool.daemon.sources import SourceContext
from ridpool.keys import pool_keys
from ridpool.testing import Faults, Simulator
from structlog.testing import capture_logs

from tests.conftest import PREFIX
from tests.daemonkit import CUSTOMER_ID, FAST, SECRET, eventually, make_config, running, web_pool
from tests.poolkit import fill, publish_pool, server_ms

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=7, faults=Faults(latency=0.05)) as s:
        yield s


async def _live(aclient: AsyncPoolClient, pool: str = "web") -> int:
    return (await aclient.stats(pool)).size


async def test_refill_does_not_wait_for_the_next_tick_between_rounds(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient
) -> None:
    """With a 30 s tick and 2 acquires in flight, 12 entries still arrive: each finished acquire starts a round."""
    config = make_config(redis_url, sim.url, web_pool(12, max_in_flight=2), rate_limit=10)
    async with running(config, timing=dataclasses.replace(FAST, tick=30.0)):
        await eventually(lambda: _is(aclient, 12), timeout=10, what="12 entries within one tick")
    assert sim.stats().acquired == 12 and sim.stats().rate_limited == 0


async def _is(aclient: AsyncPoolClient, n: int) -> bool:
    return await _live(aclient) == n


def _shift_to(r: redis.Redis, seconds_ahead: float) -> tuple[float, int]:
    """A warmup_shift that puts the next `* * * * *` instant `seconds_ahead` from now; and that instant (server ms)."""
    now = server_ms(r)
    instant = now + round(seconds_ahead * 1000)
    shift = (60_000 - instant % 60_000) % 60_000
    return shift / 1000, instant


@pytest.mark.parametrize("replicas", [1, 3])
async def test_a_warmup_is_ready_at_its_instant_and_popped_entries_are_not_replaced(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis, replicas: int
) -> None:
    """Standing 2 + warm-up 12: 14 ready at the instant, acquired in the seconds before it; 12 pops with wait=0
    all succeed; the popped entries are not replaced (only the standing size is), and Agora issued 14."""
    shift, instant = _shift_to(r, 6.0)
    pool = web_pool(2, max_age=30, warmups=[{"cron": "* * * * *", "size": 12, "duration": 4}])
    config = make_config(redis_url, sim.url, pool, rate_limit=10)
    timing = dataclasses.replace(FAST, warmup_shift=shift)
    async with running(config, replicas=replicas, timing=timing):
        await eventually(lambda: _is(aclient, 2), what="the standing size")
        before = await aclient.stats("web")
        assert before.target_now == 2 and before.target_reason == "size 2" and before.next_warmup
        await eventually(lambda: server_ms(r) >= instant, timeout=10, what="the instant")
        at = await aclient.stats("web")
        popped = [await aclient.pop("web") for _ in range(12)]  # wait=0: PoolEmpty would fail the test
        during = await aclient.stats("web")
        await eventually(lambda: server_ms(r) >= instant + 4500, timeout=10, what="the window's end")
        after = await aclient.stats("web")
    assert at.size == 14 and at.oldest_age is not None and at.oldest_age < 8  # young: acquired just before
    assert "warmup * * * * *" in at.target_reason
    assert during.size == 2  # what was popped used the warm-up up: only the standing size is refilled
    assert after.size == 2 and after.target_now == 2
    assert len({e.resource_id for e in popped}) == 12 and all(e.expires_in > 0 for e in popped)
    for e in popped:
        assert sim.check(e.resource_id, appid=e.appid, cname=e.cname, uid=e.uid) is None
    stats = sim.stats()
    assert stats.acquired == 14 and stats.rate_limited == 0 and stats.reused == 0


async def _target_is(aclient: AsyncPoolClient, n: int) -> bool:
    return (await aclient.stats("web")).target_now == n


async def test_warmup_entries_expiring_in_the_window_are_replaced_and_none_after_it(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """With max_age 5 s and a 7 s window, unused warm-up entries die inside it and are replaced; after the
    window nothing more is acquired for it."""
    shift, instant = _shift_to(r, 4.0)
    pool = web_pool(0, max_age=5, warmups=[{"cron": "* * * * *", "size": 4, "duration": 7}])
    config = make_config(redis_url, sim.url, pool, rate_limit=10)
    async with running(config, timing=dataclasses.replace(FAST, warmup_shift=shift)):
        await eventually(lambda: server_ms(r) >= instant, timeout=10, what="the instant")
        assert await _live(aclient) == 4
        await eventually(lambda: sim.stats().acquired >= 8, timeout=10, what="replacements in the window")
        await eventually(lambda: server_ms(r) >= instant + 7000, timeout=10, what="the window's end")
        acquired = sim.stats().acquired
        await eventually(lambda: _is(aclient, 0), timeout=10, what="the rest expires")
    assert sim.stats().acquired == acquired  # nothing after the window
    assert sim.stats().rate_limited == 0


async def test_status_and_stats_show_waste_over_the_last_samples(
    redis_url: str, r: redis.Redis, aclient: AsyncPoolClient
) -> None:
    """One sample step after 5 adds, 2 pops and 3 expiries: acquired 5, popped 2, expired unused 3, waste 60%."""
    publish_pool(r, PREFIX, "web")
    keys = pool_keys(PREFIX, "web")
    functions.load_library(r)

    def sample() -> int | None:
        live = functions.run(r, stats.live(keys, "template"))
        call = functions.sample_call(keys, step_ms=300, retention_ms=60_000, live=live)
        return functions.parse_sample(functions.execute(r, call))

    assert sample() is not None  # the first step: a baseline
    fill(r, PREFIX, "web", 5, life=0.4)
    for _ in range(2):
        await aclient.pop("web")
    await eventually(lambda: _expired(aclient), what="3 entries past their time")
    deadline = time.monotonic() + 5
    while sample() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the next step begins within 300 ms
    hour = (await aclient.stats("web")).hour
    assert (hour.acquired, hour.popped, hour.expired, hour.ratio) == (5, 2, 3, 0.6)
    with pytest.raises(PoolEmpty):
        await aclient.pop("web")


async def _expired(aclient: AsyncPoolClient) -> bool:
    return (await aclient.stats("web")).counters["expired"] == 3


async def test_learned_demand_reads_recorded_history_from_redis_and_logs_each_raise(
    redis_url: str, r: redis.Redis
) -> None:
    """History as the sampler writes it (two weeks of 40 starts at one minute): the source forecasts that minute,
    capped at max_size - size, logs the raise once, and the plan raises the target before the minute."""
    config = make_config(redis_url, "http://127.0.0.1:9", web_pool(2, auto_size=True, max_size=30))
    keys = pool_keys(PREFIX, "web")
    minute = 29_000_000
    for weeks in (1, 2):
        r.hset(keys.history, str(minute - weeks * demand.WEEK), "40 40 0 0")
    client = redis.asyncio.Redis.from_url(redis_url)
    source = demand.LearnedSource(SourceContext(client, config, Timing()))
    with capture_logs() as logs:
        await source.refresh("web", (minute - 3) * 60_000, frozenset())
        found = source.demands("web", (minute - 3) * 60_000)
        await source.refresh("web", (minute - 2) * 60_000, frozenset())
        again = source.demands("web", (minute - 2) * 60_000)
    await client.aclose()
    assert [(d.count, d.at_ms) for d in found] == [(28, minute * 60_000)] and again == found
    assert [e["event"] for e in logs] == ["demand.learned"] and logs[0]["pool"] == "web"
    plan = planner.plan(
        [Demand("web", None, 2, 0, None, "size"), *found],
        now_ms=minute * 60_000 - 2000,
        rate=9,
        max_age_ms={"web": 270_000},
    )
    assert plan[("web", None)].count == 30 and plan[("web", None)].reason.startswith("learned weekly")


def _ridpool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ridpool.cli", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_check_config_exits_2_listing_every_warmup_problem(tmp_path: Path) -> None:
    """An infeasible size (with the largest feasible one), a bad cron and a bad zone, all on stderr, exit 2."""
    path = tmp_path / "bad.toml"
    path.write_text(
        '[agora]\nbase_url = "https://api.sd-rtn.com"\nrate_limit = 10\n[[pools]]\nname = "web"\n'
        'appid = "0123456789abcdef0123456789abcdef"\ncname = "web-{uuid}"\nuid = "5"\nscene = 1\nsize = 20\n'
        '[[pools.warmups]]\ncron = "0 9 * * 1-5"\nsize = 9000\n'
        '[[pools.warmups]]\ncron = "0 9 * * 9"\ntimezone = "Europe/Nowhere"\nsize = 10\n'
    )
    done = _ridpool("check-config", "-c", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pools[0].warmups[0].size: 9000 cannot be ready" in done.stderr
    assert "the largest feasible size is" in done.stderr
    assert "pools[0].warmups[1].cron" in done.stderr and "pools[0].warmups[1].timezone" in done.stderr


async def test_status_shows_the_target_its_reason_the_next_warmup_and_the_last_hour(
    redis_url: str, r: redis.Redis
) -> None:
    """The stats hash fields the daemon writes appear in `ridpool status`, as a table and as JSON."""
    publish_pool(r, PREFIX, "web", size=2)
    keys = pool_keys(PREFIX, "web")
    reason = "warmup 0 9 * * 1-5 at 2026-11-26T09:00:00+01:00 +200; size 2"
    r.hset(keys.stats, mapping={"target": 202, "target_reason": reason, "next_warmup": "2026-11-26T08:00:00+00:00"})
    r.hset(keys.history, mapping={"last": 100, "100": "10 8 1 2", "99": "10 9 0 0", "30": "99 0 0 99"})
    table = _ridpool("status", "--redis-url", redis_url, "--prefix", PREFIX)
    assert table.returncode == 0, table.stderr
    assert f"web: target 202 ({reason}); next warm-up 2026-11-26T08:00:00+00:00" in table.stdout
    assert "last hour: acquired 20, popped 17, expired unused 2 (waste 10.0%), misses 1" in table.stdout
    [web] = json.loads(_ridpool("status", "--json", "--redis-url", redis_url, "--prefix", PREFIX).stdout)["pools"]
    assert (web["target"], web["targetReason"], web["nextWarmup"]) == (202, reason, "2026-11-26T08:00:00+00:00")
    assert web["lastHour"] == {"acquired": 20, "popped": 17, "expiredUnused": 2, "misses": 1, "wasteRatio": 0.1}


async def test_replicas_sample_demand_history_as_counters_with_a_ttl(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Three replicas sampling every 50 ms with 300 ms steps write steps of four counters (no IDs) that together
    count each acquire once, in a key that expires."""
    keys = pool_keys(PREFIX, "web")
    timing = dataclasses.replace(FAST, sample=0.05, history_step=0.3)
    async with running(make_config(redis_url, sim.url, web_pool(3), rate_limit=10), replicas=3, timing=timing):
        await eventually(lambda: len([k for k in r.hkeys(keys.history) if k.isdigit()]) >= 3, what="3 steps")
    history = {k.decode(): v.decode() for k, v in r.hgetall(keys.history).items()}
    steps = sorted(int(k) for k in history if k.isdigit())
    assert all(len(history[str(s)].split()) == 4 for s in steps)  # added pops misses expired: counters only
    assert sum(int(history[str(s)].split()[0]) for s in steps) <= 3
    assert 0 < r.pttl(keys.history) <= 35 * 86_400_000


async def test_the_daemon_raises_the_target_ahead_of_learned_demand_and_lowers_it_after(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Recorded history (1 s steps: 30 starts at one step on each of the last two weeks) makes the daemon raise
    the target to max_size just before that step, with its reason in status and the logs, then back to size."""
    keys = pool_keys(PREFIX, "web")
    step = server_ms(r) // 1000 + 5
    week = 7 * 86_400
    r.hset(keys.history, mapping={str(step - week): "30 30 0 0", str(step - 2 * week): "30 30 0 0"})
    pool = web_pool(2, max_age=20, auto_size=True, max_size=10)
    timing = dataclasses.replace(FAST, history_step=1.0, sample=60.0)
    seen: list[int] = []

    async def target_is(n: int) -> bool:
        stats = await aclient.stats("web")
        if stats.target_now is not None:  # None until the daemon's first round published it
            seen.append(stats.target_now)
        return stats.target_now == n and stats.size == n

    with capture_logs() as logs:
        async with running(make_config(redis_url, sim.url, pool, rate_limit=10), timing=timing):
            await eventually(lambda: target_is(10), timeout=10, what="the learned raise")
            raised = await aclient.stats("web")
            await eventually(lambda: server_ms(r) >= step * 1000, timeout=10, what="the learned step")
            await eventually(lambda: _target_is(aclient, 2), timeout=5, what="back to the standing size")
    assert raised.target_reason.startswith("learned weekly: 30+ starts at this minute 2 weeks running")
    assert max(seen) == 10 and min(seen) >= 2
    learned = [e for e in logs if e["event"] == "demand.learned"]
    assert [(e["pool"], e["at_ms"], e["per_channel"]) for e in learned] == [("web", step * 1000, 8)]
    assert sim.stats().rate_limited == 0


@pytest.mark.parametrize(
    ("pops_since_plan", "leases"),
    [
        (0, 14),  # nothing popped since the plan: the whole target
        (5, 9),  # five warm-up entries popped meanwhile: not acquired again
        (40, 2),  # more pops than the warm-up wanted: the standing part stays
    ],
)
def test_pops_made_after_a_round_planned_use_its_warmup_target_up(
    r: redis.Redis, pops_since_plan: int, leases: int
) -> None:
    """A round planned before pops (target 14 of which 12 a warm-up's) leases only what the pops left of it."""
    keys = pool_keys(PREFIX, "web")
    publish_pool(r, PREFIX, "web")
    r.hset(keys.stats, "pops", 100 + pops_since_plan)
    want = functions.Want(None, 14, consumable=12, want=50)
    call = functions.reserve_call(keys, [want], cap=50, lease_ms=15_000, token_base="t", pops_seen=100)
    functions.load_library(r)
    assert len(functions.parse_reserve(functions.execute(r, call)).slots[0].leases) == leases
