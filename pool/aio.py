"""The asyncio client: `AsyncPoolClient` mirrors `PoolClient` method for method."""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio
from ridpool import functions, stats
from ridpool.client import _for, check_wait, wait_slice
from ridpool.connect import Mode, aconnect
from ridpool.entry import Entry
from ridpool.errors import PoolEmpty
from ridpool.keys import check_prefix, pool_keys, registry


class AsyncPoolClient:
    """Pops entries from ridpool's pools with redis.asyncio; safe to share between tasks."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "ridpool") -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self._slice = wait_slice(client)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "ridpool", mode: Mode = "standalone", **kwargs: Any
    ) -> AsyncPoolClient:
        """See `PoolClient.from_url`."""
        return cls(aconnect(url, mode=mode, **kwargs), prefix=prefix)

    async def pop(self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0) -> Entry:
        """See `PoolClient.pop`."""
        keys = pool_keys(self.prefix, pool)
        wait = check_wait(wait)
        deadline = time.monotonic() + wait
        while True:
            last = time.monotonic() >= deadline
            call = functions.pop_call(keys, cname, min_ttl, record_miss=last)
            entry = functions.parse_pop(await functions.aexecute(self.redis, call))
            if entry is not None:
                return entry
            if last:
                raise PoolEmpty(f"pool {pool!r} has no entry with {min_ttl:g} s left" + _for(cname))
            remaining = deadline - time.monotonic()
            if remaining > 0:
                await self._block(keys.ready(cname), min(remaining, self._slice))

    async def _block(self, key: str, seconds: float) -> None:
        with functions.reaching(self.redis):
            await self.redis.blpop([key], timeout=max(seconds, 0.01))

    async def report(self, entry: Entry, *, ok: bool, code: int | str | None = None) -> float:
        """Tell how `start` went with a popped entry (Agora's error code on failure); returns its age in seconds.

        Counted by the entry's age, so that `stats().starts` shows failure rates by age.
        """
        call = functions.report_call(pool_keys(self.prefix, entry.pool), entry, ok=ok, code=code)
        return int(await functions.aexecute(self.redis, call)) / 1000

    async def stats(self, pool: str) -> stats.PoolStats:
        keys = pool_keys(self.prefix, pool)
        with functions.reaching(self.redis):
            first = await self._pipeline(stats.first_round(keys))
            second = await self._pipeline(stats.second_round(keys, first))
        return stats.build(keys, first, second)

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
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncPoolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
