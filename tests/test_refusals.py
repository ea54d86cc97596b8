"""Raw FCALLs as a buggy starter in another language might send them: refused with BAD_ARGUMENT, nothing changed.

Each case is sent as is (redis-py's fcall, no ridpool builder in the way) to a Redis holding published pools, queued
entries, counters, a budget log and a starter in line; afterwards every key is byte for byte what it was, with
the same expiry or none.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from ridpool import functions
from ridpool.daemon.limiter import Budget
from ridpool.keys import account_keys, pool_keys

from tests.conftest import PREFIX
from tests.poolkit import fill, publish_pool

pytestmark = pytest.mark.integration
ROOMS, WEB = pool_keys(PREFIX, "rooms"), pool_keys(PREFIX, "web")
ACCT, OTHER = account_keys(PREFIX, "default"), account_keys(PREFIX, "other")
BUDGET = (ACCT.rate, ACCT.cooldown, ACCT.turns, ACCT.turns_lease)
POP = (ROOMS.meta, ROOMS.stats)
HUGE = str(10**12)

CASES: list[tuple[str, str, tuple[str, ...], tuple[Any, ...]]] = [
    # (what, function, KEYS, ARGV)
    ("room-2's queue with cname room-1", "ridpool_pop", (*POP, ROOMS.queue("room-2")), ("room-1", 0, "1")),
    ("the same, packed", "ridpool_pop_packed", (*POP, ROOMS.queue("room-2"), ROOMS.announced), ("room-1", 0, "1")),
    ("the template queue for a cname", "ridpool_pop", (*POP, ROOMS.queue(None)), ("room-2", 0, "1")),
    ("another pool's stats", "ridpool_pop", (ROOMS.meta, WEB.stats, ROOMS.queue("room-2")), ("room-2", 0, "1")),
    ("another pool's ann key", "ridpool_pop", (*POP, ROOMS.queue("room-2"), WEB.announced), ("room-2", 0, "1")),
    (
        "another pool's change feed",
        "ridpool_pop",
        (*POP, ROOMS.queue("room-2"), ROOMS.announced, WEB.changes),
        ("room-2", 0, "1"),
    ),
    (
        "a request key of another pool",
        "ridpool_pop",
        (*POP, ROOMS.queue("room-2"), ROOMS.announced, ROOMS.changes, WEB.popped("a" * 24)),
        ("room-2", 0, "1"),
    ),
    (
        "a request id too short",
        "ridpool_pop",
        (*POP, ROOMS.queue("room-2"), ROOMS.announced, ROOMS.changes, ROOMS.popped("abc")),
        ("room-2", 0, "1"),
    ),
    ("min_ttl nan", "ridpool_pop", (*POP, ROOMS.queue("room-2")), ("room-2", "nan", "1")),
    ("min_ttl -inf", "ridpool_pop", (*POP, ROOMS.queue("room-2")), ("room-2", "-inf", "1")),
    ("min_ttl of five minutes", "ridpool_pop", (*POP, ROOMS.queue("room-2")), ("room-2", 300000, "1")),
    ("min_ttl a fraction", "ridpool_pop_packed", (*POP, ROOMS.queue("room-2")), ("room-2", "0.5", "1")),
    ("record_miss neither 0 nor 1", "ridpool_pop", (*POP, ROOMS.queue("room-2")), ("room-2", 0, "yes")),
    ("take: window 0", "ridpool_take", BUDGET, (10, 0, "t1")),
    ("take: window -1050", "ridpool_take", BUDGET, (10, -1050, "t1")),
    ("take: limit 0", "ridpool_take", BUDGET, (0, 1050, "t1")),
    ("take: limit nan", "ridpool_take", BUDGET, ("nan", 1050, "t1")),
    ("take: window inf", "ridpool_take", BUDGET, (10, "inf", "t1")),
    ("take: window huge", "ridpool_take", BUDGET, (10, HUGE, "t1")),
    ("take: no ticket", "ridpool_take", BUDGET, (10, 1050, "")),
    (
        "take: keys of two accounts",
        "ridpool_take",
        (ACCT.rate, OTHER.cooldown, ACCT.turns, ACCT.turns_lease),
        (10, 1050, "t1"),
    ),
    (
        "take: a pool's keys",
        "ridpool_take",
        (f"{WEB.tag}:rate", f"{WEB.tag}:cooldown", f"{WEB.tag}:turns", f"{WEB.tag}:turns:lease"),
        (10, 1050, "t1"),
    ),
    ("take: two keys (the old contract)", "ridpool_take", (ACCT.rate, ACCT.cooldown), (10, 1050, "t1")),
    ("refills: count 0", "ridpool_take_refills", (*BUDGET, ACCT.refilled), (10, 1050, "c1", 0, 5000)),
    ("refills: floor huge", "ridpool_take_refills", (*BUDGET, ACCT.refilled), (10, 1050, "c1", 4, HUGE)),
    ("refills: window 0", "ridpool_take_refills", (*BUDGET, ACCT.refilled), (10, 0, "c1", 4, 5000)),
    ("cooldown huge", "ridpool_cooldown", (ACCT.cooldown,), (HUGE,)),
    ("cooldown a minute and a ms", "ridpool_cooldown", (ACCT.cooldown,), (60001,)),
    ("cooldown nan", "ridpool_cooldown", (ACCT.cooldown,), ("nan",)),
    ("cooldown on a pool's key", "ridpool_cooldown", (WEB.stats,), (1000,)),
    ("hold huge", "ridpool_hold", (WEB.hold,), (HUGE,)),
    ("hold -inf", "ridpool_hold", (WEB.hold,), ("-inf",)),
    ("hold on the stats key", "ridpool_hold", (WEB.stats,), (1000,)),
    ("report given the stats key", "ridpool_report", (ROOMS.stats, ROOMS.meta), (0, "ok", "")),
    ("report: meta of another pool", "ridpool_report", (ROOMS.starts, WEB.meta), (0, "ok", "")),
    ("report: sent_at nan", "ridpool_report", (ROOMS.starts, ROOMS.meta), ("nan", "ok", "")),
    ("report: a fourth argument", "ridpool_report", (ROOMS.starts, ROOMS.meta), (0, "ok", "", "x")),
    ("report: a third key", "ridpool_report", (ROOMS.starts, ROOMS.meta, ROOMS.stats), (0, "ok", "")),
    ("report: outcome maybe", "ridpool_report", (ROOMS.starts, ROOMS.meta), (0, "maybe", "")),
    ("freshen: the stats key", "ridpool_freshen", (ROOMS.stats,), ("f", 1, 30000, 0, "", 0, 0, 1000, "")),
    ("freshen: max_age 0", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 0, 0, "", 0, 0, 1000, "")),
    ("freshen: max_age 5 min", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 300001, 0, "", 0, 0, 1000, "")),
    ("freshen: since after minute", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 30000, 2, "", 0, 0, 1000, "")),
    ("freshen: probe sideways", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 30000, 0, "sideways", 0, 0, 1000, "")),
    ("freshen: share nan", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 30000, 0, "older", "nan", 0, 1000, "")),
    ("freshen: share 2", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 30000, 0, "older", 2, 0, 1000, "")),
    ("freshen: hold 0", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 30000, 0, "", 0, 0, 0, "")),
    ("freshen: no fingerprint", "ridpool_freshen", (ROOMS.meta,), ("", 1, 30000, 0, "", 0, 0, 1000, "")),
    ("freshen: no reason", "ridpool_freshen", (ROOMS.meta,), ("f", 1, 30000, 0, "", 0, 0, 1000)),
    ("hold_uid: hold huge", "ridpool_hold_uid", (ROOMS.uids,), (HUGE, 900001)),
    ("hold_uid: uid 0", "ridpool_hold_uid", (ROOMS.uids,), (1000, 0)),
    ("hold_uid: uid 2^32", "ridpool_hold_uid", (ROOMS.uids,), (1000, 2**32)),
    ("hold_uid: no candidate", "ridpool_hold_uid", (ROOMS.uids,), (1000,)),
    ("hold_uid: on the stats key", "ridpool_hold_uid", (ROOMS.stats,), (1000, 900001)),
]


def snapshot(r: redis.Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key's serialized value and whether it expires."""
    return {key: (r.dump(key), r.pttl(key) >= 0) for key in r.keys("*")}


@pytest.fixture
def busy(r: redis.Redis) -> redis.Redis:
    """Published pools with entries and counters, a budget log with a grant, a starter waiting in line."""
    functions.load_library(r)
    publish_pool(r, PREFIX, "rooms", cnames=("room-1", "room-2"))
    publish_pool(r, PREFIX, "web")
    fill(r, PREFIX, "rooms", 3, cname="room-2", named=True)
    fill(r, PREFIX, "web", 2)
    r.hset(ROOMS.stats, "pops", 7)
    r.zadd(ROOMS.uids, {"900001": 1})  # long expired: a call that ran would drop it
    assert r.fcall("ridpool_take", 4, *BUDGET, 10, 1050, "first") == 0
    assert r.fcall("ridpool_take", 4, *BUDGET, 10, 1050, "waiting") > 0
    return r


@pytest.mark.parametrize(("what", "function", "keys", "args"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_call_is_refused_and_changes_nothing(
    busy: redis.Redis, what: str, function: str, keys: tuple[str, ...], args: tuple[Any, ...]
) -> None:
    """Keys that do not belong together or an argument out of range: BAD_ARGUMENT, every key as it was."""
    before = snapshot(busy)
    with pytest.raises(redis.ResponseError, match=r"^BAD_ARGUMENT"):
        busy.fcall(function, len(keys), *keys, *args)
    assert snapshot(busy) == before


def test_the_refusal_reaches_python_as_invalid_argument(busy: redis.Redis) -> None:
    """Through ridpool's own driver the refusal is InvalidArgument, naming the key that does not fit."""
    call = functions.Call("ridpool_pop_packed", (*POP, ROOMS.queue("room-2")), ("room-1", 0, "1"))
    with pytest.raises(functions.InvalidArgument, match=r"KEYS\[3\] must be the queue of the cname given"):
        functions.execute(busy, call)


@pytest.mark.parametrize("seconds", [0, -1, 60.5, float("nan"), float("inf")])
def test_the_builders_refuse_a_hold_or_cooldown_beyond_the_maximum(seconds: float) -> None:
    """hold_call and cooldown_call say so before Redis is reached: a wait above 0, up to 60 s."""
    with pytest.raises(functions.InvalidArgument, match="up to 60"):
        functions.hold_call(WEB, seconds)
    with pytest.raises(functions.InvalidArgument, match="up to 60"):
        functions.cooldown_call(ACCT, seconds)


async def test_a_refill_waiting_on_a_cooldown_resumes_as_soon_as_it_is_deleted(redis_url: str) -> None:
    """A 60 s cooldown set, then deleted: the daemon's budget re-checks it and grants within half a second."""
    client = redis.asyncio.Redis.from_url(redis_url)
    await functions.acheck_library(client)
    budget = Budget(client, ACCT, rate=10)
    await functions.aexecute(client, functions.cooldown_call(ACCT, 60))
    take = asyncio.create_task(budget.take())
    await asyncio.sleep(0.3)
    assert not take.done()
    deleted = time.monotonic()
    await client.delete(ACCT.cooldown)
    await asyncio.wait_for(take, 2)
    assert time.monotonic() - deleted < 0.5
    await client.aclose()
