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

Why not a library: throttled-py's GCRA was evaluated; it paces at the full rate (the bunching problem above)
and keeps its state in its own key format, which a starter in another language could not draw from without
re-implementing it. Ours is one Redis Function any client can call.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio
from ridpool import functions
from ridpool.budget import NETWORK_JITTER, window_for
from ridpool.daemon.backoff import doubling
from ridpool.keys import AccountKeys

# After a 429 every replica waits this long, doubled for each 429 in a row, up to the cap.
COOLDOWN_FIRST, COOLDOWN_CAP = 1.0, 16.0


def cooldown_for(consecutive_429s: int) -> float:
    """Seconds every replica waits after the n-th 429 in a row (n >= 1)."""
    return doubling(consecutive_429s, COOLDOWN_FIRST, COOLDOWN_CAP)


class Budget:
    """Waits for a grant from the account's shared window before each request to Agora."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: AccountKeys,
        rate: float,
        *,
        jitter: float = NETWORK_JITTER,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.window = window_for(rate, jitter)
        self.jitter = jitter
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.consecutive_429s = 0
        self.granted = 0
        self.stale = 0
        self.best_rtt = math.inf
        # One waiter per replica asks Redis; the others queue here (FIFO). Without it every waiting acquire
        # would wake at each expiry and ask, and all but one be refused: load on Redis for nothing.
        self.queue = asyncio.Lock()

    async def take(self) -> None:
        """Return once a request may be sent. Raises PoolUnavailable when Redis cannot be reached."""
        async with self.queue:
            await self._take()

    async def _take(self) -> None:
        while True:
            call = functions.take_call(
                self.keys, limit=self.window.limit, window_ms=self.window.window_ms, member=uuid.uuid4().hex
            )
            sent = time.monotonic()
            wait = functions.parse_wait(await functions.aexecute(self.redis, call))
            rtt = time.monotonic() - sent
            # The best round trip drifts up slowly so that a lasting change of network path is learnt.
            self.best_rtt = min(rtt, self.best_rtt + 0.001)
            if wait <= 0:
                if rtt - self.best_rtt > self.jitter / 2:
                    # The grant may be older than the margin allows by the time the request leaves (a stalled
                    # event loop, a slow reply): sending it now could bunch it with later grants. Waste it.
                    self.stale += 1
                    continue
                self.granted += 1
                return
            # A little jitter so that replicas woken by the same expiry do not all ask in the same millisecond.
            await self.sleep(wait + self.rng.uniform(0, 0.002))

    async def rate_limited(self) -> float:
        """Agora answered 429: make every replica of the account wait; returns the wait now in force."""
        self.consecutive_429s += 1
        call = functions.cooldown_call(self.keys, cooldown_for(self.consecutive_429s))
        return functions.parse_wait(await functions.aexecute(self.redis, call))

    def succeeded(self) -> None:
        self.consecutive_429s = 0
