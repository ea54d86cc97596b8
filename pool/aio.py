"""The asyncio client: `AsyncPoolClient` mirrors `PoolClient` method for method, driving the same plans."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis.asyncio
from ridpool import functions, plans, stats
from ridpool.client import socket_timeout
from ridpool.entry import Entry
from ridpool.functions import Announced
from ridpool.keys import check_prefix, pool_keys, registry


class AsyncPoolClient:
    """Pops entries from ridpool's pools with redis.asyncio; safe to share between tasks."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "ridpool") -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self._slice = plans.wait_slice(socket_timeout(client))

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ridpool", **kwargs: Any) -> AsyncPoolClient:
        return cls(
            redis.asyncio.Redis.from_url(url, **functions.connection_defaults(kwargs, asyncio=True)), prefix=prefix
        )

    async def pop(self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0) -> Entry:
        """See `PoolClient.pop`."""
        plan = plans.pop(pool_keys(self.prefix, pool), cname, min_ttl, wait, slice_seconds=self._slice)
        return await functions.arun(self.redis, plan)

    async def announce(self, pool: str, cname: str, *, at: datetime | float, count: int = 1) -> Announced:
        """See `PoolClient.announce`."""
        return await functions.arun(self.redis, plans.announce(pool_keys(self.prefix, pool), cname, at, count))

    async def report(self, entry: Entry, *, ok: bool, code: int | str | None = None) -> float:
        """See `PoolClient.report`."""
        return await functions.arun(
            self.redis, plans.report(pool_keys(self.prefix, entry.pool), entry, ok=ok, code=code)
        )

    async def stats(self, pool: str) -> stats.PoolStats:
        return await functions.arun(self.redis, plans.pool_stats(pool_keys(self.prefix, pool)))

    async def pools(self) -> list[str]:
        return await functions.arun(self.redis, plans.pools(registry(self.prefix)))

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncPoolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
