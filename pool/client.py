"""The synchronous client recording starters import: `PoolClient.pop`, `PoolClient.stats`.

Each method drives a plan of `plans` with `functions.run`; `AsyncPoolClient` drives the same plans.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from ridpool import functions, plans, stats
from ridpool.entry import Entry
from ridpool.functions import Announced
from ridpool.keys import check_prefix, pool_keys, registry


def socket_timeout(client: redis.Redis | Any) -> float | None:
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    return None if timeout is None else float(timeout)


class PoolClient:
    """Pops entries from the pools a ridpool daemon keeps in Redis. Thread-safe (redis-py's connection pool)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "ridpool") -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self._slice = plans.wait_slice(socket_timeout(client))

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ridpool", **kwargs: Any) -> PoolClient:
        return cls(redis.Redis.from_url(url, **functions.connection_defaults(kwargs, asyncio=False)), prefix=prefix)

    def pop(self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0) -> Entry:
        """Take the oldest entry with at least `min_ttl` seconds left, waiting up to `wait` seconds for one.

        Raises PoolEmpty when none came, UnknownPool / CnameNotServed for a pool or channel nobody configured,
        PoolUnavailable when Redis cannot be reached.
        """
        plan = plans.pop(pool_keys(self.prefix, pool), cname, min_ttl, wait, slice_seconds=self._slice)
        return functions.run(self.redis, plan)

    def announce(self, pool: str, cname: str, *, at: datetime | float, count: int = 1) -> Announced:
        """Announce that channel `cname` of an announced pool is to be recorded at `at` (an aware datetime, or
        seconds from now): the daemon acquires `count` entries to be ready then; `pop(pool, cname=cname)` takes them.

        Raises InvalidArgument for a channel name Agora would refuse or an `at` more than 7 days ahead,
        UnknownPool, NotAnnounced for a pool that does not take announcements, PoolUnavailable.
        """
        return functions.run(self.redis, plans.announce(pool_keys(self.prefix, pool), cname, at, count))

    def report(self, entry: Entry, *, ok: bool, code: int | str | None = None) -> float:
        """Tell how `start` went with a popped entry (Agora's error code on failure); returns its age in seconds.

        Counted by the entry's age, so that `stats().starts` shows failure rates by age.
        """
        return functions.run(self.redis, plans.report(pool_keys(self.prefix, entry.pool), entry, ok=ok, code=code))

    def stats(self, pool: str) -> stats.PoolStats:
        return functions.run(self.redis, plans.pool_stats(pool_keys(self.prefix, pool)))

    def pools(self) -> list[str]:
        """Names of every pool a daemon has published under this prefix."""
        return functions.run(self.redis, plans.pools(registry(self.prefix)))

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
