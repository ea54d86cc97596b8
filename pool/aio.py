"""The asyncio client: `AsyncPoolClient` mirrors `PoolClient` method for method, driving the same plans."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import redis.asyncio
from ridpool import budget as budgets
from ridpool import functions, plans, plugins, stats
from ridpool.budget import Account
from ridpool.client import ConfigSource, settings_of, slot_plans, socket_timeout
from ridpool.connect import Mode, aconnect
from ridpool.entry import Entry
from ridpool.errors import CnameNotServed, PoolEmpty, RidpoolError
from ridpool.functions import Announced
from ridpool.keys import check_prefix, pool_keys, registry
from ridpool.ondemand import Acquirer, unavailable


class AsyncPoolClient:
    """Pops entries from ridpool's pools with redis.asyncio; safe to share between tasks."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "ridpool",
        account: Account | None = None,
        acquirer: Acquirer | None = None,
    ) -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self.account = account
        self.acquirer = acquirer
        self.why_no_acquirer: RidpoolError | None = None
        self._slice = plans.wait_slice(socket_timeout(client))
        self._trips = plans.RoundTrips()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "ridpool",
        mode: Mode = "standalone",
        account: Account | None = None,
        **kwargs: Any,
    ) -> AsyncPoolClient:
        """See `PoolClient.from_url`."""
        return cls(aconnect(url, mode=mode, **kwargs), prefix=prefix, account=account)

    @classmethod
    def from_config(cls, config: ConfigSource, **kwargs: Any) -> AsyncPoolClient:
        """See `PoolClient.from_config`; the connection and library check are made by `warm` (which
        `async with` runs on entry)."""
        found = settings_of(config)
        client = cls(found.redis.aconnect(**kwargs), prefix=found.redis.key_prefix, account=found.account)
        try:
            client.acquirer = plugins.acquirer_factory()(config, client.redis)
        except RidpoolError as exc:
            client.why_no_acquirer = exc
        return client

    async def warm(self) -> None:
        """See `PoolClient.warm`."""
        with contextlib.suppress(RidpoolError, redis.RedisError):
            await functions.acheck_library(self.redis)
        if self.acquirer is not None:
            await self.acquirer.warm()

    async def pop_or_acquire(
        self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0
    ) -> Entry:
        """See `PoolClient.pop_or_acquire`."""
        if self.acquirer is None:
            raise unavailable(self.why_no_acquirer)
        try:
            return await self.pop(pool, cname=cname, min_ttl=min_ttl, wait=wait)
        except PoolEmpty:
            pass
        except CnameNotServed:
            if not self.acquirer.serves(pool, cname):
                raise
        return await self.acquirer.acquire(pool, cname)

    async def pop(self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0) -> Entry:
        """See `PoolClient.pop`."""
        plan = plans.pop(pool_keys(self.prefix, pool), cname, min_ttl, wait, slice_seconds=self._slice)
        return await functions.arun(self.redis, plan)

    async def announce(self, pool: str, cname: str, *, at: datetime | float, count: int = 1) -> Announced:
        """See `PoolClient.announce`."""
        return await functions.arun(self.redis, plans.announce(pool_keys(self.prefix, pool), cname, at, count))

    @contextlib.asynccontextmanager
    async def start_slot(
        self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0
    ) -> AsyncIterator[Entry]:
        """`async with aclient.start_slot("web") as entry: await start(...)`: see `PoolClient.start_slot`."""
        plan, turn = slot_plans(
            self.prefix,
            self.account,
            pool,
            cname=cname,
            min_ttl=min_ttl,
            wait=wait,
            slice_seconds=self._slice,
            trips=self._trips,
        )
        slot = await functions.arun(self.redis, plan)
        entry = slot.entry
        if entry is None:
            if slot.refused is not None and (self.acquirer is None or not self.acquirer.serves(pool, cname)):
                raise slot.refused
            if self.acquirer is None:
                raise unavailable(self.why_no_acquirer)
            entry = await self.acquirer.acquire(pool, cname, granted_at=slot.granted_at)
            await functions.arun(self.redis, turn())
        yield entry

    async def take(self, *, rate: float | None = None, account: str | None = None) -> float:
        """See `PoolClient.take`."""
        chosen = budgets.resolve(self.account, rate=rate, name=account)
        plan = plans.take(chosen.keys(self.prefix), chosen.window, trips=self._trips)
        return (await functions.arun(self.redis, plan)).waited

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

    async def aclose(self) -> None:
        if self.acquirer is not None:
            await self.acquirer.aclose()
            self.acquirer = None
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncPoolClient:
        await self.warm()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
