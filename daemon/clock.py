"""Time for the daemon: its own monotonic clock, injected everywhere, and Redis server time carried forward on it.

Entries are stamped with the server time their acquire was sent, so every replica and every pop agree on an
entry's age whatever the hosts' wall clocks say. Reading TIME before each acquire would cost a round trip; instead
the offset between server time and the monotonic clock is refreshed every refill round. The estimate errs early
(TIME is read before its reply arrives), so an entry is taken to be, if anything, older than it is.

Every component takes the one `ServerClock` (or its `monotonic`) in its constructor, so a test can hand in a
clock it moves by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio
from ridpool import functions

Monotonic = Callable[[], float]  # seconds, never stepping backwards


class ServerClock:
    def __init__(self, monotonic: Monotonic = time.monotonic) -> None:
        self.monotonic = monotonic
        self.offset_ms: float | None = None

    async def sync(self, client: redis.asyncio.Redis) -> None:
        sent = self.monotonic()
        with functions.reaching(client):
            seconds, micros = await client.time()
        self.offset_ms = seconds * 1000 + micros / 1000 - sent * 1000

    def server_ms(self, monotonic: float) -> int:
        """Server time (ms) at the given monotonic instant; needs one sync first."""
        if self.offset_ms is None:
            raise RuntimeError("ServerClock.sync() must run before server_ms()")
        return int(monotonic * 1000 + self.offset_ms)

    def now_ms(self) -> int:
        """Server time (ms) now."""
        return self.server_ms(self.monotonic())
