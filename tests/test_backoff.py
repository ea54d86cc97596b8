"""One capped-doubling backoff, and holds shared by replicas that one replica can never shorten for another."""

from __future__ import annotations

import pytest
import redis
from ridpool import functions
from ridpool.daemon.backoff import doubling
from ridpool.errors import InvalidArgument
from ridpool.keys import account_keys, pool_keys

from tests.conftest import PREFIX


@pytest.mark.parametrize(
    ("n", "first", "cap", "seconds"),
    [
        (1, 2.0, 20.0, 2.0),
        (2, 2.0, 20.0, 4.0),
        (4, 2.0, 20.0, 16.0),
        (5, 2.0, 20.0, 20.0),
        (60, 2.0, 20.0, 20.0),
        (1, 0.25, 8.0, 0.25),
        (6, 0.25, 8.0, 8.0),
        (0, 1.0, 16.0, 1.0),
    ],
)
def test_doubling_starts_at_first_doubles_per_failure_and_stops_at_the_cap(
    n: int, first: float, cap: float, seconds: float
) -> None:
    """first, 2 x first, 4 x first ... for the n-th failure in a row, never above the cap (n < 1 counts as 1)."""
    assert doubling(n, first, cap) == seconds


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["hold", "cooldown"])
def test_a_shorter_hold_never_shortens_a_longer_one(r: redis.Redis, kind: str) -> None:
    """ridpool_hold (a pool's) and ridpool_cooldown (an account's) only ever lengthen the wait in force."""
    functions.load_library(r)
    keys = pool_keys(PREFIX, "web")
    acct = account_keys(PREFIX, "default")
    call = (lambda s: functions.hold_call(keys, s)) if kind == "hold" else (lambda s: functions.cooldown_call(acct, s))
    key = keys.hold if kind == "hold" else acct.cooldown
    assert 9.0 < functions.parse_wait(functions.execute(r, call(10.0))) <= 10.0
    assert 9.0 < functions.parse_wait(functions.execute(r, call(1.0))) <= 10.0  # another replica's shorter wait
    assert r.pttl(key) > 9000
    r.pexpire(key, 50)
    assert 19.0 < functions.parse_wait(functions.execute(r, call(20.0))) <= 20.0  # a longer one extends it


@pytest.mark.integration
def test_a_hold_of_no_time_is_refused(r: redis.Redis) -> None:
    """A wait that is not a positive number of ms is a BAD_ARGUMENT error, not a key without expiry."""
    functions.load_library(r)
    hold = pool_keys(PREFIX, "web").hold
    with pytest.raises(InvalidArgument, match="whole number of ms"):
        functions.execute(r, functions.Call("ridpool_hold", (hold,), (0,)))
    assert not r.exists(hold)
