"""The daemon's local ticker: run a job now and then every `interval` seconds by a monotonic clock.

Not APScheduler's interval trigger, which schedules on wall-clock time: a backward step of the host's clock (NTP,
a VM restored, an operator's `date -s`) stopped refill and heartbeat for the length of the step, a forward step
fired a burst of late runs. A monotonic clock never steps. The clock and the sleep are arguments, so the schedule
is tested without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def every(
    interval: float,
    job: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run `job` at once, then every `interval` seconds from its previous start, until cancelled or `stop` is set.

    A run that outlasts the interval delays the next one (runs never overlap nor pile up to catch up). `stop` ends
    the loop even when a job swallowed the cancellation meant for it (Python 3.11's `asyncio.wait_for` can, when
    its inner await finishes at the moment of the cancel), so a shutdown never waits on a ticker for ever.
    """
    next_at = clock()
    while stop is None or not stop.is_set():
        await job()
        next_at = max(next_at + interval, clock())
        await sleep(max(0.0, next_at - clock()))
