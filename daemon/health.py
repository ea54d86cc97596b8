"""What every job of one replica shares about Redis and the pools: whether Redis answers (the jobs pause together
with one backoff when it does not), and which pools' keys are damaged (skipped until they can be used again).

Both are held here, apart from the jobs that consult them, so the refill, the publisher and the daemon's ticker
each ask one object rather than one another's internals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import redis.asyncio
import structlog
from ridpool import functions
from ridpool.daemon.backoff import doubling
from ridpool.daemon.clock import Monotonic
from ridpool.errors import PoolUnavailable, RidpoolError
from ridpool.keys import PoolKeys

log = structlog.get_logger("ridpool.daemon")


class RedisHealth:
    """One replica's view of Redis: jobs run through `guarded`; a job that finds Redis down pauses every job
    with a growing backoff, and the first to reach it again logs the recovery and calls `on_recovered`."""

    def __init__(self, clock: Monotonic, *, backoff_cap: float, stale_after: float) -> None:
        self.clock = clock
        self.backoff_cap = backoff_cap
        self.stale_after = stale_after  # seconds without a job reaching Redis before /healthz fails
        self.down_since: float | None = None
        self.retry_at = 0.0
        self.failures = 0
        self.last_ok: float | None = None  # monotonic time a job last reached Redis
        self.running = False
        self.on_down: Callable[[], None] = lambda: None
        self.on_recovered: Callable[[], Awaitable[None]] | None = None

    async def guarded(self, name: str, job: Callable[[], Awaitable[object]]) -> None:
        """Run one job; Redis trouble pauses the jobs with backoff, anything else is logged, never fatal.

        Shutdown cancels a job still running (a refill round waiting for the budget): the cancellation goes
        through, ending its loop."""
        if self.down_since is not None and self.clock() < self.retry_at:
            return
        try:
            await job()
            self.last_ok = self.clock()
        except PoolUnavailable as exc:
            self.failed(exc)
            return
        except Exception as exc:
            log.error("daemon.job_failed", job=name, error=f"{type(exc).__name__}: {exc}")
            return
        if self.down_since is not None:
            log.info("redis.recovered", down_seconds=round(self.clock() - self.down_since, 1))
            self.down_since, self.failures = None, 0
            if self.on_recovered is not None:
                await self.guarded("recovered", self.on_recovered)

    def failed(self, exc: PoolUnavailable) -> None:
        self.failures += 1
        self.on_down()
        pause = doubling(self.failures, 0.25, self.backoff_cap)
        self.retry_at = self.clock() + pause
        if self.down_since is None:
            self.down_since = self.clock()
            log.error("redis.unavailable", error=str(exc), retry_in=pause)

    def status(self) -> tuple[bool, str]:
        """What /healthz answers: ok while the daemon runs and its jobs reach Redis; else why not, in one line."""
        if not self.running:
            return False, "not running (starting or stopping)"
        if self.down_since is not None:
            return False, f"Redis unreachable for {self.clock() - self.down_since:.0f} s"
        if self.last_ok is None:
            return False, "starting: Redis not reached yet"
        silent = self.clock() - self.last_ok
        if silent > self.stale_after:
            return False, f"no job has reached Redis for {silent:.0f} s"
        return True, "ok"


class PoolDamage:
    """Pools the refill skips while the others go on: those whose keys Redis refuses (wrong type, permission,
    ...), or whose demand could not be read, each in error (logged once per cause; written to the pool's stats,
    state `error`, when that key itself is usable); and those this replica keeps `apart` from (the publisher
    decides: another live replica's different config holds the pool, or it is not published yet)."""

    def __init__(self, client: redis.asyncio.Redis, keys: dict[str, PoolKeys]) -> None:
        self.redis = client
        self.keys = keys
        self.why: dict[str, str] = {}  # pool -> the cause now in force
        self.now: set[str] = set()  # pools found damaged during the current round
        self.apart: set[str] = set()  # pools this replica neither leases nor stores for (see Publisher)

    def begin_round(self) -> None:
        self.now.clear()

    def __contains__(self, pool: str) -> bool:
        return pool in self.now or pool in self.apart

    async def mark(self, pool: str, exc: RidpoolError, *, event: str = "refill.pool_damaged") -> None:
        message = str(exc)
        self.now.add(pool)
        if self.why.get(pool) != message:
            log.error(event, pool=pool, kind=type(exc).__name__, error=message)
        self.why[pool] = message
        with contextlib.suppress(RidpoolError, redis.RedisError), functions.reaching(self.redis):
            await self.redis.hset(self.keys[pool].stats, mapping={"state": "error", "last_error": message[:500]})

    def end_round(self) -> None:
        """Pools not found damaged in a whole round are sound again."""
        for pool in set(self.why) - self.now:
            del self.why[pool]
            log.info("refill.pool_recovered", pool=pool)
