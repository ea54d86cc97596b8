"""Starters' own start/query/stop calls drawing from the account's shared budget (the daemon's)."""

from __future__ import annotations

import pytest
import redis
from ridpool import AsyncPoolClient, InvalidArgument, PoolClient, functions, plans
from ridpool.keys import account_keys

from tests.conftest import PREFIX

KEYS = account_keys(PREFIX, "default")


def test_the_take_plan_sleeps_what_the_budget_says_then_asks_again() -> None:
    """The plan asks ridpool_take, sleeps the wait it answers, asks again, and returns the time waited."""
    plan = plans.take(KEYS, limit=10, window_ms=1050)
    first = plan.send(None)
    assert isinstance(first, tuple) and first[:2] == ("FCALL", "ridpool_take")
    assert plan.send(95) == functions.Sleep(0.095)
    assert plan.send(None)[1] == "ridpool_take"
    with pytest.raises(StopIteration) as done:
        plan.send(0)
    assert done.value.value == pytest.approx(0.095)


@pytest.mark.integration
def test_a_starters_calls_are_spaced_by_the_shared_budget(r: redis.Redis, client: PoolClient) -> None:
    """Back-to-back calls inside `budget()` are spaced like the daemon's acquires, in the same sliding log."""
    waits = []
    for _ in range(3):
        with client.budget(rate=10) as waited:
            waits.append(waited)
    assert waits[0] == 0 and all(0.05 < w < 0.5 for w in waits[1:])
    assert r.zcard(KEYS.rate) == 3  # the log every replica and starter draws from


@pytest.mark.integration
async def test_the_async_budget_draws_from_the_same_log(r: redis.Redis, aclient: AsyncPoolClient) -> None:
    """`async with aclient.budget(...)` takes a grant from the same account log."""
    async with aclient.budget(rate=8, account="default"):
        pass
    assert r.zcard(KEYS.rate) == 1


@pytest.mark.integration
def test_a_budget_needs_the_daemons_rate(client: PoolClient) -> None:
    """Without a config, the rate must be given (the daemon's agora.rate_limit); a bad one is refused."""
    with pytest.raises(InvalidArgument, match="rate="), client.budget():
        pass
    with pytest.raises(InvalidArgument):
        client.take(rate=0)
