"""What the clients do, written once as I/O-free plans that `functions.run` (sync) and `functions.arun` (asyncio)
drive: `PoolClient` and `AsyncPoolClient` are thin drivers of these, so the pop/wait loop exists once.

A plan yields Redis commands and is sent their replies (see `functions.Plan`); it reads the clock it is given,
so its timing is tested without waiting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ridpool import channels, functions, stats
from ridpool.budget import Window
from ridpool.entry import Entry
from ridpool.errors import CnameNotServed, InvalidArgument, PoolEmpty
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
    miss: bool = True,
) -> Plan[Entry]:
    """Take the oldest entry with at least `min_ttl` s left, blocking on the wake-up list up to `wait` s.

    Only the last try counts a miss (none with `miss` False), so a waiting pop that succeeds is not a miss. Every
    try carries the pop's request id: a try sent again after its reply was lost returns the entry it took.
    """
    deadline = clock() + check_wait(wait)
    request = functions.request_id()
    while True:
        last = clock() >= deadline
        call = functions.pop_call(keys, cname, min_ttl, record_miss=last and miss, request=request)
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


# A grant whose reply came back this much slower than the client's fastest ask is not used: the request would
# leave late, bunched with the grants after it (the window's margin is the account's jitter, 50 ms by default;
# half of it is left for the network).
LATE = 0.025


@dataclass(slots=True)
class RoundTrips:
    """The fastest turn a client's asks have taken, the yardstick of a late reply. It drifts up a millisecond per
    ask, so that a lasting change of network path is learnt. One per client, shared by its requests: the first ask
    of a burst (many starters asking at once in one process) is judged against the calm before it."""

    fastest: float = math.inf

    def seen(self, seconds: float) -> float:
        self.fastest = min(seconds, self.fastest + 0.001)
        return self.fastest


@dataclass(frozen=True, slots=True)
class Grant:
    """A starter's turn: when its grant arrived (by the plan's clock), how long the starter waited for it, and the
    ticket it was granted to (asking again with it, soon, puts the request at the head of the line)."""

    at: float
    waited: float
    ticket: str


def take(
    keys: AccountKeys,
    window: Window,
    *,
    again: str | None = None,
    trips: RoundTrips | None = None,
    clock: Callable[[], float] = time.monotonic,
    use_by_ms: int | None = None,
) -> Plan[Grant]:
    """Wait for a starter's turn at the account's shared budget (`ridpool_take`): in line with every other
    starter's request, ahead of the daemon's refills, first come first served among requests that give no
    `use_by_ms` (the server time by which the request must go out), earliest deadline first with those that do.
    One ticket per request, sent on every ask; a grant whose reply came back late is not used: the same ticket asks
    again, at the head of the line. `again`: the ticket of a grant that went stale before it could be used (the
    same: the head of the line)."""
    started = clock()
    ticket, trips = again or functions.ticket(), trips or RoundTrips()
    while True:
        while True:
            call = functions.take_call(
                keys, limit=window.limit, window_ms=window.window_ms, ticket=ticket, use_by_ms=use_by_ms
            )
            sent = clock()
            wait = functions.parse_wait((yield from functions.fcall(call)))
            arrived = clock()
            fastest = trips.seen(arrived - sent)
            if wait <= 0:
                break
            yield functions.Sleep(wait)
        if arrived - sent - fastest <= LATE:
            return Grant(arrived, arrived - started, ticket)
        if again == ticket:  # its one turn at the head came late too: a new request, at the back
            ticket = functions.ticket()
        again = ticket


@dataclass(frozen=True, slots=True)
class Slot:
    """What `start_slot`'s plan found: the entry popped after the starter's turn, or none (acquire on the spot,
    with the turn granted at `granted_at` when it is still fresh); `refused`: the pop's CnameNotServed (a channel an
    acquirer may still serve)."""

    entry: Entry | None
    granted_at: float | None
    refused: CnameNotServed | None = None


def start_slot(
    keys: PoolKeys,
    account: AccountKeys,
    window: Window,
    *,
    cname: str | None,
    min_ttl: float,
    wait: float,
    slice_seconds: float = WAIT_SLICE,
    trips: RoundTrips | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Plan[Slot]:
    """Wait for the starter's turn, then pop the oldest entry with `min_ttl` left: the turn's grant is the one the
    start call uses, and the entry does not age while the starter waits in line.

    With nothing fit and a `wait`, the pop blocks up to `wait` s for an entry and then takes a new turn (the first
    grant went stale meanwhile); with nothing at all, the plan returns no entry and the caller acquires on the spot.
    """
    functions.check_pop(cname, min_ttl)
    check_wait(wait)
    trips = trips or RoundTrips()
    keep_ms = math.ceil(min_ttl * 1000)  # an entry's use-by: its expiry less the life the start needs
    use_by = None
    if cname:
        # A channel's own entry is the one this starter will start: its line place is when that entry must be
        # used by, so that a burst's starters go in the order their entries expire (the order they were acquired
        # in), whatever order they arrive in. A template pool's starter pops the oldest entry after its turn.
        oldest = yield ("ZRANGE", keys.queue(cname), 0, 0, "WITHSCORES")
        if oldest:  # [[member, score]] as redis-py parses it; [member, score] as it comes off the wire
            score = oldest[0][1] if isinstance(oldest[0], list | tuple) else oldest[1]
            use_by = int(float(score)) - keep_ms
    grant = yield from take(account, window, trips=trips, clock=clock, use_by_ms=use_by)
    try:
        entry = yield from pop(keys, cname, min_ttl, 0.0, clock=clock, miss=wait <= 0)
        if clock() - grant.at > LATE:
            # The pop's reply came late (a busy process): the grant would leave late; its ticket asks again, at
            # the head of the line, while the entry waits.
            grant = yield from take(account, window, again=grant.ticket, trips=trips, clock=clock)
        return Slot(entry, grant.at)
    except PoolEmpty:
        if wait <= 0:
            return Slot(None, grant.at)
    except CnameNotServed as exc:
        return Slot(None, grant.at, exc)
    try:
        entry = yield from pop(keys, cname, min_ttl, wait, slice_seconds=slice_seconds, clock=clock)
    except PoolEmpty:
        return Slot(None, None)
    use_by = entry.expires_at_ms - keep_ms  # it holds its entry now: placed by when it must go
    return Slot(entry, (yield from take(account, window, trips=trips, clock=clock, use_by_ms=use_by)).at)
