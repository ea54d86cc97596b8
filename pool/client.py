"""The synchronous client recording starters import: `PoolClient.pop`, `PoolClient.stats`.

Each method drives a plan of `plans` with `functions.run`; `AsyncPoolClient` drives the same plans.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import redis
from ridpool import budget as budgets
from ridpool import functions, plans, plugins, settings, stats
from ridpool.budget import Account
from ridpool.connect import Mode, connect
from ridpool.entry import Entry
from ridpool.errors import CnameNotServed, PoolEmpty, RidpoolError
from ridpool.functions import Announced, Plan
from ridpool.keys import check_prefix, pool_keys, registry
from ridpool.ondemand import Acquirer, Background, unavailable


def socket_timeout(client: redis.Redis | Any) -> float | None:
    pool = getattr(client, "connection_pool", None)  # a Cluster client has one per node: keep the default slice
    timeout = pool.connection_kwargs.get("socket_timeout") if pool is not None else None
    return None if timeout is None else float(timeout)


ConfigSource = str | os.PathLike[str] | Any  # a config file, or the daemon's loaded Config (it has .settings())


def settings_of(config: ConfigSource) -> settings.Settings:
    """The starter's settings of a config file, or of a loaded config object that offers them."""
    if isinstance(config, str | os.PathLike):
        return settings.read(config)
    return config.settings()  # type: ignore[no-any-return]


def slot_plans(
    prefix: str,
    account: Account | None,
    pool: str,
    *,
    cname: str | None,
    min_ttl: float,
    wait: float,
    slice_seconds: float,
    trips: plans.RoundTrips,
) -> tuple[Plan[plans.Slot], Callable[[], Plan[plans.Grant]]]:
    """What both clients' `start_slot` drive: the slot's plan, and the plan of a starter's turn (for the start
    after an acquire on the spot) in the client's account."""
    chosen = budgets.resolve(account, rate=None, name=None)
    keys = chosen.keys(prefix)
    plan = plans.start_slot(
        pool_keys(prefix, pool),
        keys,
        chosen.window,
        cname=cname,
        min_ttl=min_ttl,
        wait=wait,
        slice_seconds=slice_seconds,
        trips=trips,
    )
    return plan, lambda: plans.take(keys, chosen.window, trips=trips)


class SyncAcquirer:
    """An asyncio Acquirer driven from sync code on one background loop, with its own asyncio Redis client."""

    def __init__(self, loop: Background, acquirer: Acquirer, client: Any) -> None:
        self.loop, self.acquirer, self.redis = loop, acquirer, client

    @classmethod
    def build(cls, config: ConfigSource, target: settings.RedisTarget) -> SyncAcquirer:
        """The registered acquirer for `config` on a new background loop; its Redis client made from `target`
        (mode, TLS, credentials: the same settings as the sync client's)."""
        factory = plugins.acquirer_factory()
        loop = Background()

        async def build() -> tuple[Acquirer, Any]:
            client = target.aconnect()
            return factory(config, client), client

        try:
            acquirer, client = loop.run(build())
        except BaseException:
            loop.close()
            raise
        return cls(loop, acquirer, client)

    def serves(self, pool: str, cname: str | None) -> bool:
        return self.acquirer.serves(pool, cname)

    def acquire(self, pool: str, cname: str | None, *, granted_at: float | None = None) -> Entry:
        return self.loop.run(self.acquirer.acquire(pool, cname, granted_at=granted_at))

    def warm(self) -> None:
        self.loop.run(self.acquirer.warm())

    def close(self) -> None:
        async def close() -> None:
            await self.acquirer.aclose()
            await self.redis.aclose()

        self.loop.run(close())
        self.loop.close()


class PoolClient:
    """Pops entries from the pools a ridpool daemon keeps in Redis. Thread-safe (redis-py's connection pool).

    `account` is the daemon's budget (`[agora]` rate_limit, account, jitter), which `take`, `budget` and
    `start_slot` draw from; `acquirer` acquires on the spot for `pop_or_acquire` (from_config builds both).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "ridpool",
        account: Account | None = None,
        acquirer: SyncAcquirer | None = None,
    ) -> None:
        self.redis = client
        self.prefix = check_prefix(prefix)
        self.account = account
        self.acquirer = acquirer
        self.why_no_acquirer: RidpoolError | None = None  # why from_config could not build one
        self._slice = plans.wait_slice(socket_timeout(client))
        self._trips = plans.RoundTrips()  # this client's fastest turn, the yardstick of a late grant
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "ridpool",
        mode: Mode = "standalone",
        account: Account | None = None,
        **kwargs: Any,
    ) -> PoolClient:
        """A client for Redis at `url`; `mode` "cluster" or "sentinel" (with `sentinels=["host:port"]` and
        `service_name`) as `ridpool.connect.connect` describes; other keywords go to redis-py (`ssl_ca_certs`)."""
        return cls(connect(url, mode=mode, **kwargs), prefix=prefix, account=account)

    @classmethod
    def from_config(cls, config: ConfigSource, **kwargs: Any) -> PoolClient:
        """A client for the Redis, key prefix and budget of the daemon's config (a file, or its loaded Config).

        Everything the first pop, `start_slot` and `pop_or_acquire` need is made here, not on first use: the
        connection and the function library check, and (with the daemon extra) the Agora acquirer, so the first
        pop of a burst costs what any pop costs. Without the extra, pops and start_slot on a pool hit work and
        pop_or_acquire says what to install.
        """
        found = settings_of(config)
        client = cls(found.redis.connect(**kwargs), prefix=found.redis.key_prefix, account=found.account)
        try:
            client.acquirer = SyncAcquirer.build(config, found.redis)
        except RidpoolError as exc:
            client.why_no_acquirer = exc
        client.warm()
        return client

    def warm(self) -> None:
        """Open a connection and check the function library now, and load what the acquirer's first acquire would
        (best effort: a Redis that is down is met, and reported, by the first real call instead)."""
        with contextlib.suppress(RidpoolError, redis.RedisError):
            functions.check_library(self.redis)
        if self.acquirer is not None:
            self.acquirer.warm()

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

        Raises what `pop` raises, and AcquireFailed (with Agora's answer and X-Request-Id) when the acquire fails.
        """
        acquirer = self._acquirer()
        try:
            return self.pop(pool, cname=cname, min_ttl=min_ttl, wait=wait)
        except PoolEmpty:
            pass
        except CnameNotServed:
            if not acquirer.serves(pool, cname):
                raise
        return acquirer.acquire(pool, cname)

    def _acquirer(self) -> SyncAcquirer:
        if self.acquirer is None:
            raise unavailable(self.why_no_acquirer)
        return self.acquirer

    @contextlib.contextmanager
    def start_slot(
        self, pool: str, *, cname: str | None = None, min_ttl: float = 0.0, wait: float = 0.0
    ) -> Iterator[Entry]:
        """`with client.start_slot("rooms", cname="room-2") as entry: recorder.start(...)`: waits for the starter's
        turn at the shared budget (ahead of the daemon's refills; a channel's starter is placed in line by when its
        entry must be used, so a burst's starters go in the order their entries expire), then
        pops the oldest entry with at least `min_ttl` seconds left; the turn's grant is the one the start call in
        the block uses, so the entry does not age in line. `entry.source` is "pool". When the pool has nothing fit
        (after `wait` seconds, if given), it acquires on the spot inside the budget (with that grant) and takes a
        second turn for the start: `entry.source` is "acquired" (that needs from_config and the daemon extra).

        Same arguments and errors as `pop_or_acquire`; the budget is the client's account (from_config, or
        `account=` given to from_url).
        """
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
        slot = functions.run(self.redis, plan)
        entry = slot.entry
        if entry is None:
            if slot.refused is not None and (self.acquirer is None or not self.acquirer.serves(pool, cname)):
                raise slot.refused
            entry = self._acquirer().acquire(pool, cname, granted_at=slot.granted_at)
            functions.run(self.redis, turn())
        yield entry

    def take(self, *, rate: float | None = None, account: str | None = None) -> float:
        """Wait for one request's turn at the account's shared budget, the one the daemon's acquires draw from
        (`ridpool_take`): such requests are served first come first served, ahead of the daemon's refills. Returns the
        seconds waited. A client made by `from_config` knows the account and rate; otherwise give the daemon's
        `agora.rate_limit` (and `agora.account` when it is not "default").
        """
        chosen = budgets.resolve(self.account, rate=rate, name=account)
        return functions.run(self.redis, plans.take(chosen.keys(self.prefix), chosen.window, trips=self._trips)).waited

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

    def close(self) -> None:
        with self._lock:
            if self.acquirer is not None:
                self.acquirer.close()
                self.acquirer = None
        self.redis.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
