"""Slow start: a pool sends one request at a time until one succeeds, at start-up and after an acquire gave up,
so a wrong secret is not sent a whole round of concurrent acquires; a healthy account fills at the budget.

Against a running daemon and the simulator over real HTTP, counting the requests the simulator received.
"""

from __future__ import annotations

import time

import pytest
from ridpool import AsyncPoolClient
from ridpool.daemon.config import Credentials
from ridpool.testing import Faults, Simulator

from tests.daemonkit import CUSTOMER_ID, SECRET, eventually, make_config, running, web_pool

pytestmark = pytest.mark.integration


async def test_a_wrong_secret_costs_at_most_three_requests_in_the_first_ten_seconds(
    redis_url: str, aclient: AsyncPoolClient
) -> None:
    """The simulator rejects the credentials (401): one request, then one after each hold (2 s, 4 s, ...), never
    two at once: <= 3 in the first 10 s, and still probing (>= 2)."""
    wrong = Credentials(customer_id=CUSTOMER_ID, customer_secret="wrong-secret-0123456789")  # type: ignore[arg-type]
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, faults=Faults(latency=0.3)) as sim:
        config = make_config(redis_url, sim.url, web_pool(10), rate_limit=10)
        started = time.monotonic()
        async with running(config, credentials=wrong):
            await eventually(lambda: sim.stats().requests >= 1, what="the first request")
            # A window to count requests in (the holds are Redis TTLs, on its clock), not a wait for a state.
            await eventually(lambda: time.monotonic() - started >= 1.0, what="1 s")
            first_second = sim.stats().requests
            await eventually(lambda: time.monotonic() - started >= 10.0, timeout=12, what="10 s")
            ten_seconds = sim.stats().requests
            state = (await aclient.stats("web")).state
    assert first_second == 1  # not a round of concurrent acquires before the first 401 came back
    assert 2 <= ten_seconds <= 3
    assert state == "error" and sim.stats().acquired == 0


async def test_a_healthy_account_fills_at_the_budget_after_its_first_answer(
    redis_url: str, aclient: AsyncPoolClient
) -> None:
    """Agora answering in 0.5 s: one request at a time would take 10 s for 20 IDs; after the first success the
    pool fills at the budget (8/s here), in well under 5 s."""
    with Simulator(customer_id=CUSTOMER_ID, customer_secret=SECRET, faults=Faults(latency=0.5)) as sim:
        config = make_config(redis_url, sim.url, web_pool(20), rate_limit=8)
        async with running(config):
            await eventually(lambda: sim.stats().requests >= 1, what="the first request")
            first = time.monotonic()

            async def full() -> bool:
                return (await aclient.stats("web")).size == 20

            await eventually(full, timeout=15, what="the pool full")
            took = time.monotonic() - first
    assert took < 5.0, f"20 IDs took {took:.1f} s after the first request"
    assert sim.stats().max_in_window >= 6  # the budget was used, not one request at a time
