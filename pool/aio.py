"""The asyncio client: `AsyncPoolClient` mirrors `PoolClient` method for method, driving the same plans."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis.asyncio
from ridpool import functions, ondemand, plans, stats
from ridpool.client import socket_timeout
from ridpool.connect import Mode, aconnect
from ridpool.entry import Entry
from ridpool.functions import Announced
from ridpool.keys import check_prefix, pool_keys, registry

if TYPE_CHECKING:
    from ridpool.daemon.config import Config
    from ridpool.daemon.ondemand import OnDemand


class AsyncPoolClient:
    """Pops entries from ridpool's pools with redis.asyncio; safe to share between tasks."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "ridpool", config: Config | None = None) -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self.config = config
        self._slice = plans.wait_slice(socket_timeout(client))
        self._ondemand: OnDemand | None = None

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "ridpool", mode: Mode = "standalone", **kwargs: Any
    ) -> AsyncPoolClient:
        """See `PoolClient.from_url`."""
        return cls(aconnect(url, mode=mode, **kwargs), prefix=prefix)

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], **kwargs: Any) -> AsyncPoolClient:
        """See `PoolClient.from_config`."""
        config = ondemand.load(config)
        client = aconnect(config.redis.url, **{**config.redis.client_kwargs(), **kwargs})
        return cls(client, prefix=config.redis.key_prefix, config=config)

    async def pop_or_acquire(
        self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0
    ) -> Entry:
        """See `PoolClient.pop_or_acquire`."""
        if self._ondemand is None:
            self._ondemand = ondemand.make(ondemand.check_config(self.config), self.redis)
        return await self._ondemand.pop_or_acquire(pool, cname=cname, min_ttl=min_ttl, wait=wait)

    async def pop(self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0) -> Entry:
        """See `PoolClient.pop`."""
        plan = plans.pop(pool_keys(self.prefix, pool), cname, min_ttl, wait, slice_seconds=self._slice)
        return await functions.arun(self.redis, plan)

    async def announce(self, pool: str, cname: str, *, at: datetime | float, count: int = 1) -> Announced:
        """See `PoolClient.announce`."""
        return await functions.arun(self.redis, plans.announce(pool_keys(self.prefix, pool), cname, at, count))

    async def take(self, *, rate: float | None = None, account: str | None = None) -> float:
        """See `PoolClient.take`."""
        b = ondemand.budget(self.config, self.prefix, rate=rate, account=account)
        return await functions.arun(self.redis, plans.take(b.keys, limit=b.limit, window_ms=b.window_ms))

    @contextlib.asynccontextmanager
    async def budget(self, *, rate: float | None = None, account: str | None = None) -> AsyncIterator[float]:
        """`async with client.budget(): await start(...)`: see `PoolClient.budget`."""
        yield await self.take(rate=rate, account=account)

    async def report(self, entry: Entry, *, ok: bool, code: int | str | None = None) -> float:
        """See `PoolClient.report`."""
        return await functions.arun(
            self.redis, plans.report(pool_keys(self.prefix, entry.pool), entry, ok=ok, code=code)
        )

    async def stats(self, pool: str) -> stats.PoolStats:
        return await functions.arun(self.redis, plans.pool_stats(pool_keys(self.prefix, pool)))

    async def pools(self) -> list[str]:
        with functions.reaching(self.redis):
            names = await self.redis.smembers(registry(self.prefix))
        return sorted(functions.text(n) for n in names)

    async def _pipeline(self, commands: list[tuple[str, ...]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)

    async def aclose(self) -> None:
        if self._ondemand is not None:
            await self._ondemand.aclose()
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncPoolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
