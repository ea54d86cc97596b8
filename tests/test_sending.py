"""A grant that went stale between the budget and the request's first byte is not used: another is taken there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio
from ridpool.daemon import sending
from ridpool.daemon.limiter import Budget
from ridpool.daemon.service import Daemon
from ridpool.keys import account_keys
from ridpool.testing import Simulator

from tests.conftest import PREFIX
from tests.daemonkit import CREDENTIALS, CUSTOMER_ID, FAST, SECRET, eventually, make_config, web_pool

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, seed=5) as s:
        yield s


def stalling(stall: float, times: int) -> httpx.AsyncClient:
    """A client whose first `times` requests stall the event loop `stall` seconds after their grant, before they
    leave (a busy CPU between the budget and the socket)."""
    left = [times]

    async def stall_once(request: httpx.Request) -> None:
        if left[0] > 0:
            left[0] -= 1
            time.sleep(stall)  # blocks the loop on purpose: nothing else may run, as on a starved CPU

    return httpx.AsyncClient(event_hooks={"request": [stall_once]})


@pytest.mark.parametrize(("stall", "grants"), [(0.0, 1), (0.06, 2)])
async def test_a_request_that_would_leave_late_takes_a_new_grant(
    redis_url: str, sim: Simulator, stall: float, grants: int
) -> None:
    """Stalled past the grant's freshness before its headers are written, the request takes another grant (and is
    sent once); sent at once, it uses the one it holds."""
    client = redis.asyncio.Redis.from_url(redis_url)
    budget = Budget(client, account_keys(PREFIX, "default"), 10)
    http = sending.guard(stalling(stall, 1))
    taken: list[float] = []

    async def again(held: sending.Held) -> float:
        taken.append(await budget.take())
        return taken[-1]

    try:
        taken.append(await budget.take())
        sending.hold(sending.Held(taken[0], budget.fresh, again))
        response = await http.get(f"{sim.url}/_sim/stats")
    finally:
        sending.hold(None)
        await http.aclose()
        await client.aclose()
    assert response.status_code == 200
    assert budget.granted == grants and len(taken) == grants


async def test_the_daemons_refills_never_send_on_a_stale_grant(redis_url: str, sim: Simulator) -> None:
    """A daemon whose requests stall 60 ms after their grants (a starved process): every stalled acquire takes a
    second grant before it leaves, none is sent on a stale one, and Agora never answers 429."""
    config = make_config(redis_url, sim.url, web_pool(6), rate_limit=10)
    daemon = Daemon(config, CREDENTIALS, timing=FAST, http=stalling(0.06, 6), replica_id="r0")
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await eventually(lambda: sim.stats().acquired >= 6, what="6 acquires")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert daemon.budget.granted >= sim.stats().acquired + 6
    assert sim.stats().rate_limited == 0
