"""The synchronous client recording starters import: `PoolClient.pop`, `PoolClient.stats`.

Each method drives a plan of `plans` with `functions.run`; `AsyncPoolClient` drives the same plans.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from ridpool import functions, ondemand, plans, stats
from ridpool.connect import Mode, connect
from ridpool.entry import Entry
from ridpool.functions import Announced
from ridpool.keys import check_prefix, pool_keys, registry

if TYPE_CHECKING:
    from ridpool.daemon.config import Config
    from ridpool.daemon.ondemand import OnDemand


def socket_timeout(client: redis.Redis | Any) -> float | None:
    pool = getattr(client, "connection_pool", None)  # a Cluster client has one per node: keep the default slice
    timeout = pool.connection_kwargs.get("socket_timeout") if pool is not None else None
    return None if timeout is None else float(timeout)


class PoolClient:
    """Pops entries from the pools a ridpool daemon keeps in Redis. Thread-safe (redis-py's connection pool)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "ridpool", config: Config | None = None) -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self.config = config  # the daemon's config: what pop_or_acquire acquires with
        self._slice = plans.wait_slice(socket_timeout(client))
        self._ondemand: tuple[ondemand.Background, OnDemand] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "ridpool", mode: Mode = "standalone", **kwargs: Any) -> PoolClient:
        """A client for Redis at `url`; `mode` "cluster" or "sentinel" (with `sentinels=["host:port"]` and
        `service_name`) as `ridpool.connect.connect` describes; other keywords go to redis-py (`ssl_ca_certs`)."""
        return cls(connect(url, mode=mode, **kwargs), prefix=prefix)

    @classmethod
    def from_config(cls, config: Config | str | os.PathLike[str], **kwargs: Any) -> PoolClient:
        """A client for the Redis and key prefix of the daemon's config, able to `pop_or_acquire` (daemon extra)."""
        config = ondemand.load(config)
        client = connect(config.redis.url, **{**config.redis.client_kwargs(), **kwargs})
        return cls(client, prefix=config.redis.key_prefix, config=config)

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

    def pop_or_acquire(self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0) -> Entry:
        """`pop`, or when the pool has nothing fresh enough, an ID acquired now by ridpool's own Agora client
        within the account's shared budget (credentials from AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET).
        `entry.source` says which: "pool" or "acquired". Needs `from_config` and the daemon extra.

        Raises what `pop` raises, and the Agora client's AcquireError (a RidpoolError) when the acquire fails.
        """
        loop, acquirer = self._acquirer()
        return loop.run(acquirer.pop_or_acquire(pool, cname=cname, min_ttl=min_ttl, wait=wait))

    def _acquirer(self) -> tuple[ondemand.Background, OnDemand]:
        with self._lock:
            if self._ondemand is None:
                config = ondemand.check_config(self.config)
                ondemand.check_extra()
                loop = ondemand.Background()
                kwargs = functions.connection_defaults({"socket_timeout": config.redis.socket_timeout}, asyncio=True)

                async def build() -> OnDemand:
                    return ondemand.make(config, redis.asyncio.Redis.from_url(config.redis.url, **kwargs))

                try:
                    self._ondemand = (loop, loop.run(build()))
                except BaseException:
                    loop.close()
                    raise
            return self._ondemand

    def take(self, *, rate: float | None = None, account: str | None = None) -> float:
        """Wait for one request's grant from the account's shared budget, the one the daemon's acquires draw from
        (`ridpool_take`); returns the seconds waited. A client made by `from_config` knows the account and rate;
        otherwise give the daemon's `agora.rate_limit` (and `agora.account` when it is not "default").
        """
        b = ondemand.budget(self.config, self.prefix, rate=rate, account=account)
        return functions.run(self.redis, plans.take(b.keys, limit=b.limit, window_ms=b.window_ms))

    @contextlib.contextmanager
    def budget(self, *, rate: float | None = None, account: str | None = None) -> Iterator[float]:
        """`with client.budget(): recorder.start(...)`: the call inside runs once the shared budget grants it,
        so a starter's own start/query/stop calls and the daemon's acquires together stay within Agora's limit.
        Yields the seconds waited.
        """
        yield self.take(rate=rate, account=account)

    def report(self, entry: Entry, *, ok: bool, code: int | str | None = None) -> float:
        """Tell how `start` went with a popped entry (Agora's error code on failure); returns its age in seconds.

        Counted by the entry's age, so that `stats().starts` shows failure rates by age.
        """
        return functions.run(self.redis, plans.report(pool_keys(self.prefix, entry.pool), entry, ok=ok, code=code))

    def stats(self, pool: str) -> stats.PoolStats:
        return functions.run(self.redis, plans.pool_stats(pool_keys(self.prefix, pool)))

    def pools(self) -> list[str]:
        """Names of every pool a daemon has published under this prefix."""
        with functions.reaching(self.redis):
            names = self.redis.smembers(registry(self.prefix))
        return sorted(functions.text(n) for n in names)

    def _pipeline(self, commands: list[tuple[str, ...]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        return pipe.execute(raise_on_error=False)

    def close(self) -> None:
        if self._ondemand is not None:
            loop, acquirer = self._ondemand
            loop.run(acquirer.aclose())
            loop.run(acquirer.redis.aclose())  # its own connection, made on the background loop
            loop.close()
            self._ondemand = None
        self.redis.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
