"""Starters' own start/query/stop calls drawing from the account's shared budget (the daemon's)."""

from __future__ import annotations

import pytest
import redis
from ridpool import AsyncPoolClient, InvalidArgument, PoolClient, functions, plans
from ridpool.budget import window_for
from ridpool.keys import account_keys

from tests.conftest import PREFIX

KEYS = account_keys(PREFIX, "default")
WINDOW = window_for(10)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_take_plan_sleeps_what_the_budget_says_then_asks_again_with_the_same_ticket() -> None:
    """The plan asks ridpool_take, sleeps the wait it answers, asks again with the same ticket (its place in line),
    and returns when the grant arrived and how long it waited."""
    clock = Clock()
    plan = plans.take(KEYS, WINDOW, clock=clock)
    first = plan.send(None)
    assert isinstance(first, tuple) and first[:2] == ("FCALL", "ridpool_take")
    assert plan.send(95) == functions.Sleep(0.095)
    clock.now += 0.095
    again = plan.send(None)
    assert again[1] == "ridpool_take" and again[-1] == first[-1]
    with pytest.raises(StopIteration) as done:
        plan.send(0)
    assert done.value.value == plans.Grant(at=100.095, waited=pytest.approx(0.095), ticket=first[-1])


def test_a_grant_whose_reply_came_late_is_not_used() -> None:
    """A grant answered 30 ms slower than the request's fastest ask is dropped: the same ticket asks again (the
    function puts it at the head of the line, once); late again, a new ticket asks."""
    clock = Clock()
    plan = plans.take(KEYS, WINDOW, clock=clock)
    first = plan.send(None)
    assert plan.send(10) == functions.Sleep(0.01)
    clock.now += 0.01
    plan.send(None)
    clock.now += 0.03  # this ask's reply took 30 ms; the first took none
    again = plan.send(0)
    assert again[1] == "ridpool_take" and again[-1] == first[-1]
    clock.now += 0.03  # late again
    fresh = plan.send(0)
    assert fresh[-1] != first[-1]
    with pytest.raises(StopIteration) as done:
        plan.send(0)
    assert done.value.value.at == pytest.approx(100.07) and done.value.value.ticket == fresh[-1]


@pytest.mark.integration
def test_a_starters_calls_are_spaced_by_the_shared_budget(r: redis.Redis, client: PoolClient) -> None:
    """Back-to-back calls inside `budget()` are spaced like the daemon's acquires, in the same sliding log."""
    waits = []
    for _ in range(3):
        with client.budget(rate=10) as waited:
            waits.append(waited)
    assert waits[0] < 0.05 and all(0.05 < w < 0.5 for w in waits[1:])
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
