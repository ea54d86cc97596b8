"""The daemon serving announced channels: against a real redis-server and the simulator over HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import redis
from ridpool import AsyncPoolClient, PoolEmpty, status
from ridpool.daemon.announcements import Need, at_risk
from ridpool.daemon.service import Daemon
from ridpool.keys import pool_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import APPID, CREDENTIALS, CUSTOMER_ID, FAST, SECRET, eventually, make_config, running

KEYS = pool_keys(PREFIX, "classes")


def classes_pool(**extra: object) -> dict[str, object]:
    return {"name": "classes", "appid": APPID, "announced": True, "uid": "527841", "max_age": 270, **extra}


@pytest.mark.parametrize(
    ("needs", "rate", "late"),
    [
        ([], 9.5, []),
        ([Need("a", 10_000, 10)], 2.0, []),  # 10 in 5 s before a deadline 10 s away
        ([Need("a", 10_000, 30)], 2.0, ["a"]),  # 30 need 15 s
        ([Need("a", 10_000, 10), Need("b", 12_000, 10)], 2.0, []),  # b after a: 10 s of work by 12 s
        ([Need("a", 10_000, 10), Need("b", 12_000, 10)], 1.5, ["b"]),  # 13.3 s of work by 12 s
        ([Need("b", 12_000, 10), Need("a", 10_000, 10)], 0.9, ["a", "b"]),  # earliest deadline first, both late
        ([Need("a", 10_000, 0), Need("b", 10_000, 5)], 1.0, []),  # nothing missing counts nothing
        ([Need("a", -5_000, 1)], 9.5, ["a"]),  # past its instant and still lacking
    ],
)
def test_announcements_at_risk_are_those_the_budget_cannot_serve_in_time(
    needs: list[Need], rate: float, late: list[str]
) -> None:
    """EDF: an announcement is at risk when all work due by its instant takes longer than the time left."""
    assert at_risk(needs, now_ms=0, rate=rate) == late


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=5) as s:
        yield s


@pytest.mark.integration
async def test_announced_channels_are_ready_at_their_instant_and_used_up_by_pops(
    redis_url: str, sim: Simulator, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """Each announced channel gets its count of IDs for itself by `at`; pops use them up and nothing replaces them."""
    async with running(make_config(redis_url, sim.url, classes_pool(), rate_limit=10)) as [daemon]:
        await eventually(lambda: r.exists(KEYS.meta), what="the pool published")
        for cname, count in (("class-1", 1), ("class 2", 2), ("class-3", 1)):
            await aclient.announce("classes", cname, at=3, count=count)
        popped = [await aclient.pop("classes", cname=c, wait=8) for c in ("class-1", "class 2", "class 2", "class-3")]
        with pytest.raises(PoolEmpty):
            await aclient.pop("classes", cname="class-1")
        assert await daemon.refiller.round() == 0  # popped entries are not acquired again
        stats = await aclient.stats("classes")
    assert [e.cname for e in popped] == ["class-1", "class 2", "class 2", "class-3"]
    for e in popped:
        assert sim.check(e.resource_id, appid=e.appid, cname=e.cname, uid=e.uid) is None
    assert stats.counters["acquires"] == 4 and stats.extra["announced_pending"] == "3"
    shown = status.announcements(stats)
    assert shown["pending"] == 3 and shown["atRisk"] == 0
    assert "announcements pending 3" in status.announcement_line(stats)


@pytest.mark.integration
async def test_agora_rejecting_an_announced_channel_puts_the_pool_in_error(
    redis_url: str, aclient: AsyncPoolClient, r: redis.Redis
) -> None:
    """A 400 invalid_channel_name for an announced channel is logged, kept in last_error, and never stored."""

    def reject(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"code": 401, "reason": "invalid_channel_name"}, headers={"x-request-id": "q1"})

    config = make_config(redis_url, "http://agora.test", classes_pool(), rate_limit=10)
    http = httpx.AsyncClient(transport=httpx.MockTransport(reject))
    daemon = Daemon(config, CREDENTIALS, timing=FAST, replica_id="x", http=http)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await eventually(lambda: r.exists(KEYS.meta), what="the pool published")
        await aclient.announce("classes", "class-1", at=0)
        await eventually(lambda: r.hget(KEYS.stats, "state") == b"error", what="the pool in error")
        assert b"invalid_channel_name" in (r.hget(KEYS.stats, "last_error") or b"")
        with pytest.raises(PoolEmpty):
            await aclient.pop("classes", cname="class-1")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
