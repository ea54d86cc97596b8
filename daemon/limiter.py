"""The shared request budget of one Agora account, kept in Redis so every replica (and any starter, through
`FCALL ridpool_take`) draws from the same one.

Why a sliding log and not a token bucket: `rate_limit` is a ceiling on what Agora sees in *any* one-second
window. Grants spaced evenly at the full rate still reach Agora bunched by the network, and a sliding-window
limiter on Agora's side then counts one too many. So a grant is allowed only when fewer than `limit` were made
in the last `window`, where the window is one second plus a margin for that bunching (NETWORK_JITTER): any
`limit + 1` requests are then more than a second apart when they arrive, as long as the network delays them by
less than the margin. Grants are also spaced (90% of `window / limit` apart), because requests sent in a burst are the
ones that get bunched the most, and a grant whose round trip took much longer than usual is not used (its
request would leave late). The cost is a sustained rate of `limit / window` (10/s configured gives 9.5/s).

Starters first: a starter's request (start, query, stop, an acquire on the spot) waits in line for its turn
(`ridpool_take`, `Turns` here and `plans.take` in the starters' library), ahead of the daemon's refills
(`ridpool_take_refills`, `Budget`), which take what the starters leave, and at least one grant per
`refill_max_wait` while starters wait. A refill's call books several grants at once, spaced as the log requires
and handed out here at their times, so one replica draws every grant its window allows at any rate.

Why not a library: throttled-py's GCRA was evaluated; it paces at the full rate (the bunching problem above)
and keeps its state in its own key format, which a starter in another language could not draw from without
re-implementing it. Ours is one Redis Function any client can call.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import redis.asyncio
from ridpool import functions, plans
from ridpool.budget import NETWORK_JITTER, REFILL_MAX_WAIT, Window, window_for
from ridpool.daemon.backoff import doubling
from ridpool.keys import AccountKeys

# After a 429 every replica waits this long, doubled for each 429 in a row, up to the cap.
COOLDOWN_FIRST, COOLDOWN_CAP = 1.0, 16.0
# A wait the budget answers (a cooldown above all) is slept in slices this long at most, so that a cooldown
# someone deleted releases the refills within a slice.
RECHECK = 0.25
# Where grants are spaced closer than asyncio's timers can wait (1 ms; above ~470/s), a booked grant is handed out
# once it is due within half a spacing: sleeping would hand it out a millisecond late and lose ~5% of the window at
# 2,000/s. Half a spacing early takes at most 0.5 ms of the window's jitter margin (50 ms). Slower, never early.
TIMER = 0.001


def cooldown_for(consecutive_429s: int) -> float:
    """Seconds every replica waits after the n-th 429 in a row (n >= 1)."""
    return doubling(consecutive_429s, COOLDOWN_FIRST, COOLDOWN_CAP)


class _Account:
    """What both takers share: the account's keys and window, and the 429 cooldown every replica obeys."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: AccountKeys,
        rate: float,
        *,
        jitter: float = NETWORK_JITTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.window: Window = window_for(rate, jitter)
        self.jitter = jitter
        self.clock = clock
        self.consecutive_429s = 0

    async def rate_limited(self) -> float:
        """Agora answered 429: make every replica of the account wait; returns the wait now in force."""
        self.consecutive_429s += 1
        call = functions.cooldown_call(self.keys, cooldown_for(self.consecutive_429s))
        return functions.parse_wait(await functions.aexecute(self.redis, call))

    def succeeded(self) -> None:
        self.consecutive_429s = 0


class Budget(_Account):
    """The daemon's refills: wait for a grant from the account's shared window before each request to Agora,
    after every starter that waits (and at least one grant per `refill_max_wait` seconds while they do)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: AccountKeys,
        rate: float,
        *,
        jitter: float = NETWORK_JITTER,
        refill_max_wait: float = REFILL_MAX_WAIT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client, keys, rate, jitter=jitter, clock=clock)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.granted = 0
        self.stale = 0
        self.best_rtt = math.inf
        self.retune(rate, jitter=jitter, refill_max_wait=refill_max_wait)
        self.booked: deque[float] = deque()  # send times (this clock) of grants booked and not handed out yet
        self.wanted = 0  # takers waiting here, the one served included: how many grants to book in one call
        # One waiter per replica asks Redis; the others queue here (FIFO). Without it every waiting acquire
        # would wake at each expiry and ask, and all but one be refused: load on Redis for nothing.
        self.queue = asyncio.Lock()

    def retune(self, rate: float, *, jitter: float, refill_max_wait: float) -> None:
        """The account's rate, jitter margin and refill floor (at start, and when a reload changes them); grants
        booked already were granted by the old window and are handed out as booked."""
        self.window = window_for(rate, jitter)
        self.jitter = jitter
        self.floor_ms = max(1, round(refill_max_wait * 1000))
        self.late = jitter / 2
        spacing = self.window.spacing
        self.early = spacing / 2 if spacing < 2 * TIMER else 0.0

    async def take(self) -> float:
        """Return once a request may be sent, with when the grant was handed out (this clock). Raises
        PoolUnavailable when Redis cannot be reached."""
        self.wanted += 1
        try:
            async with self.queue:
                await self._take()
        finally:
            self.wanted -= 1
        return self.clock()

    def fresh(self, granted_at: float) -> bool:
        """Whether a grant handed out at `granted_at` (this clock) may still be used for a request sent now."""
        return self.clock() - granted_at <= self.late

    async def _take(self) -> None:
        while True:
            while self.booked:
                ahead = self.booked.popleft() - self.clock()
                if ahead < -self.late:
                    # Its time passed while nobody wanted it (an acquire cancelled, a stalled loop): sending it
                    # now could bunch it with later grants. Waste it.
                    self.stale += 1
                    continue
                if ahead > self.early:
                    await self.sleep(ahead)
                self.granted += 1
                return
            await self._book()

    async def rate_limited(self) -> float:
        """Agora answered 429: make every replica of the account wait (grants booked here are not used)."""
        self.stale += len(self.booked)
        self.booked.clear()
        return await super().rate_limited()

    async def _book(self) -> None:
        """Book as many grants as takers wait here (the function caps it), or sleep until worth asking again."""
        call = functions.take_refills_call(
            self.keys,
            limit=self.window.limit,
            window_ms=self.window.window_ms,
            call_id=uuid.uuid4().hex,
            count=self.wanted,
            floor_ms=self.floor_ms,
        )
        sent = self.clock()
        booking = functions.parse_booking(await functions.aexecute(self.redis, call))
        arrived = self.clock()
        rtt = arrived - sent
        # The best round trip drifts up slowly so that a lasting change of network path is learnt.
        self.best_rtt = min(rtt, self.best_rtt + 0.001)
        if booking.offsets:
            if rtt - self.best_rtt > self.late:
                # The grants' times were reckoned from a reply that came back late: they may leave later than
                # booked, bunched with the grants after them. Waste them.
                self.stale += len(booking.offsets)
                return
            # Counted from the reply's arrival: the server's instant lies before it, so none is handed out early.
            self.booked.extend(arrived + offset for offset in booking.offsets)
            return
        # A little jitter so that replicas woken by the same expiry do not all ask in the same millisecond.
        await self.sleep(min(booking.wait, RECHECK) + self.rng.uniform(0, 0.002))


class Turns(_Account):
    """A starter's turns at the account's budget, for an acquire on the spot (a starter's request, ahead of the
    refills): `plans.take`, the one every starter's client drives. Safe to share between tasks."""

    @functools.cached_property
    def trips(self) -> plans.RoundTrips:
        """The fastest turn seen here: the yardstick of a late grant (see plans.take)."""
        return plans.RoundTrips()

    async def take(self, *, again: str | None = None) -> plans.Grant:
        """Wait for a turn (`again`: the ticket of a grant that went stale, which asks at the head of the line)."""
        plan = plans.take(self.keys, self.window, again=again, trips=self.trips, clock=self.clock)
        return await functions.arun(self.redis, plan)

    def fresh(self, granted_at: float | None) -> bool:
        """Whether a grant that arrived at `granted_at` (this clock) may still be used for a request sent now."""
        return granted_at is not None and self.clock() - granted_at <= plans.LATE
