"""What the clients do, written once as I/O-free plans that `functions.run` (sync) and `functions.arun` (asyncio)
drive: `PoolClient` and `AsyncPoolClient` are thin drivers of these, so the pop/wait loop exists once.

A plan yields Redis commands and is sent their replies (see `functions.Plan`); it reads the clock it is given,
so its timing is tested without waiting.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime

from ridpool import channels, functions, stats
from ridpool.entry import Entry
from ridpool.errors import InvalidArgument, PoolEmpty
from ridpool.functions import Plan
from ridpool.keys import AccountKeys, PoolKeys

# A waiting pop blocks on its queue's wake-up list in slices, so it also notices entries added by paths that
# did not signal and never blocks longer than the socket timeout allows.
WAIT_SLICE = 1.0
BLOCK_FLOOR = 0.01  # BLPOP's timeout 0 means "forever": never ask for less than this


def wait_slice(socket_timeout: float | None) -> float:
    """How long one BLPOP of a waiting pop may block: well under the socket timeout, or the read would time out.

    Redis checks blocked clients' timeouts about every 100 ms, so a BLPOP can answer that much late.
    """
    if socket_timeout is None:
        return WAIT_SLICE
    return max(BLOCK_FLOOR, min(WAIT_SLICE, float(socket_timeout) / 2, float(socket_timeout) - 0.15))


def check_wait(wait: float) -> float:
    if not (isinstance(wait, int | float) and 0 <= wait <= 300):
        raise InvalidArgument(f"wait must be a number of seconds from 0 to 300, got {wait!r}")
    return float(wait)


def for_cname(cname: str | None) -> str:
    return f" for cname {cname!r}" if cname else ""


def pop(
    keys: PoolKeys,
    cname: str | None,
    min_ttl: float,
    wait: float,
    *,
    slice_seconds: float = WAIT_SLICE,
    clock: Callable[[], float] = time.monotonic,
) -> Plan[Entry]:
    """Take the oldest entry with at least `min_ttl` s left, blocking on the wake-up list up to `wait` s.

    Only the last try counts a miss, so a waiting pop that succeeds is not a miss.
    """
    deadline = clock() + check_wait(wait)
    while True:
        last = clock() >= deadline
        call = functions.pop_call(keys, cname, min_ttl, record_miss=last)
        entry = functions.parse_pop((yield from functions.fcall(call)))
        if entry is not None:
            return entry
        if last:
            raise PoolEmpty(f"pool {keys.pool!r} has no entry with {min_ttl:g} s left" + for_cname(cname))
        remaining = deadline - clock()
        if remaining > 0:
            yield ("BLPOP", keys.ready(cname), max(BLOCK_FLOOR, min(remaining, slice_seconds)))


def report(keys: PoolKeys, entry: Entry, *, ok: bool, code: int | str | None) -> Plan[float]:
    reply = yield from functions.fcall(functions.report_call(keys, entry, ok=ok, code=code))
    return int(reply) / 1000


def pool_stats(keys: PoolKeys) -> Plan[stats.PoolStats]:
    return (yield from stats.read(keys))


def pools(registry: str) -> Plan[list[str]]:
    names = yield ("SMEMBERS", registry)
    return sorted(functions.text(n) for n in names)


MAX_LEAD = 7 * 24 * 3600.0  # seconds ahead an announcement may be made for


def announce_at(at: datetime | float, *, wall: Callable[[], float] = time.time) -> str:
    """`at` as ridpool_announce takes it: '+MS' for seconds from now, Unix ms for an aware datetime."""
    if isinstance(at, datetime):
        if at.tzinfo is None or at.utcoffset() is None:
            raise InvalidArgument(f"at must be an aware datetime (with a time zone), got {at.isoformat()}")
        ahead = at.timestamp() - wall()
        when = str(round(at.timestamp() * 1000))
    elif type(at) in (int, float) and math.isfinite(at):
        ahead = float(at)
        when = f"+{max(0, round(ahead * 1000))}"  # now or the past: as soon as possible
    else:
        raise InvalidArgument(f"at must be an aware datetime or a number of seconds from now, got {at!r}")
    if ahead > MAX_LEAD:
        raise InvalidArgument(f"at must be at most 7 days ahead, got {ahead / 86400:.1f} days ahead")
    return when


def announce(keys: PoolKeys, cname: str, at: datetime | float, count: int) -> Plan[functions.Announced]:
    """Check the channel name against Agora's rules for the pool's scene, then record the announcement."""
    call = functions.announce_call(keys, cname, at=announce_at(at), count=count)
    scene = yield ("HGET", keys.meta, "scene")
    if scene is not None and (why := channels.problem(cname, int(scene))):
        raise InvalidArgument(f"pool {keys.pool!r}: cname {cname!r} {why}")
    return functions.parse_announce(cname, (yield from functions.fcall(call)))


def take(keys: AccountKeys, *, limit: int, window_ms: int) -> Plan[float]:
    """Wait for a grant from the account's shared budget (`ridpool_take`); returns the seconds waited."""
    waited = 0.0
    while True:
        call = functions.take_call(keys, limit=limit, window_ms=window_ms, member=uuid.uuid4().hex)
        wait = functions.parse_wait((yield from functions.fcall(call)))
        if wait <= 0:
            return waited
        yield functions.Sleep(wait)
        waited += wait
