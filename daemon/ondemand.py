"""The acquirer starters' clients are handed for `pop_or_acquire`: one ID acquired on the spot by ridpool's own
Agora client, with the daemon's retries, host failover and shared budget (so starters falling back to acquiring
themselves no longer draw 429s from the budget the daemon keeps to).

It implements `ridpool.ondemand.Acquirer`; the daemon package registers `acquirer` (below) under the entry-point
group `ridpool.acquirers`, which `PoolClient.from_config` finds. Async only: the sync client drives it on a
background event loop.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time

import anyio.lowlevel
import httpx
import redis.asyncio
import structlog
from ridpool import channels, functions
from ridpool.daemon import log as log_setup
from ridpool.daemon import sending
from ridpool.daemon.agora import AcquireClient, AcquireError, RateLimited
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, Credentials, PoolConfig, load_config, load_credentials
from ridpool.daemon.limiter import Turns
from ridpool.entry import Entry
from ridpool.errors import CnameNotServed, PoolEmpty, UnknownPool
from ridpool.keys import account_keys, pool_keys

log = structlog.get_logger("ridpool.ondemand")
UID_TRIES = 8  # rounds of random candidates before a uid_range pool is declared out of free uids


class OnDemand:
    """Acquires on the spot within the account's shared budget. Safe to share between tasks."""

    def __init__(
        self,
        config: Config,
        credentials: Credentials,
        client: redis.asyncio.Redis,
        *,
        http: httpx.AsyncClient | None = None,
        backoff_scale: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.pools = {p.name: p for p in config.pools}
        self.redis = client
        self.http = sending.guard(http or httpx.AsyncClient(timeout=httpx.Timeout(config.agora.timeout, connect=5.0)))
        self.acquirer = AcquireClient(self.http, config.agora.base_url, credentials, backoff_scale=backoff_scale)
        self.turns = Turns(
            client,
            account_keys(config.redis.key_prefix, config.agora.account),
            config.agora.rate_limit,
            jitter=config.agora.jitter,
        )
        self.clock = ServerClock()
        self.rng = rng or random.Random()

    def serves(self, pool: str, cname: str | None) -> bool:
        """An announced pool's channel may be acquired for before (or without) its announcement."""
        config = self.pools.get(pool)
        return config is not None and config.announced and bool(cname)

    async def acquire(self, pool: str, cname: str | None, *, granted_at: float | None = None) -> Entry:
        """One ID acquired now for the pool's (appid, cname, uid); `granted_at`: see `ridpool.ondemand.Acquirer`."""
        config = self.pools.get(pool)
        if config is None:
            raise UnknownPool(f"pool {pool!r} is not in the config pop_or_acquire was given")
        return await self._acquire(config, cname, granted_at)

    async def _acquire(self, pool: PoolConfig, cname: str | None, granted_at: float | None) -> Entry:
        """The daemon's client and retries; each attempt a starter's turn at the budget."""
        label = _channel(pool, cname)
        keys = pool_keys(self.config.redis.key_prefix, pool.name)
        await self.clock.sync(self.redis)
        uid = await self._uid(pool)
        given = [granted_at]
        ticket: list[str | None] = [None]  # the held grant's (None: a turn the caller held)

        async def take(again: str | None = None) -> float:
            grant = await self.turns.take(again=again)
            ticket[0] = grant.ticket
            return grant.at

        async def again(held: sending.Held) -> float:
            return await take(again=ticket[0])  # a stale grant's ticket asks again, at the head of the line

        async def turn() -> None:
            # The first attempt may use the turn the caller holds (start_slot's); every other takes its own.
            at, given[0] = given[0], None
            if at is not None and self.turns.fresh(at):
                ticket[0] = None
            else:
                at = await take()
            sending.hold(sending.Held(at, self.turns.fresh, again))

        async def rate_limited(exc: RateLimited) -> None:
            await self.turns.rate_limited()

        try:
            got = await self.acquirer.acquire(
                pool.appid,
                label,
                uid,
                pool.client_request(),
                before_attempt=turn,
                on_rate_limited=rate_limited,
            )
        except AcquireError as exc:
            await self.redis.hincrby(keys.stats, "errors", 1)
            log.error("ondemand.failed", pool=pool.name, cname=label, kind=exc.kind, request_id=exc.request_id)
            if not exc.request_id:
                raise
            # The caller may show only the error: it names the X-Request-Id Agora support asks for.
            raise type(exc)(
                f"{exc} (X-Request-Id {exc.request_id})", status=exc.status, request_id=exc.request_id, host=exc.host
            ) from None
        finally:
            sending.hold(None)
        self.turns.succeeded()
        entry = got.entry(pool, label, uid, self.clock.server_ms(got.sent_at))
        await self.redis.hincrby(keys.stats, "acquired_on_demand", 1)
        log.info("ondemand.acquired", pool=pool.name, cname=label, uid=uid, request_id=got.request_id)
        left = (entry.expires_at_ms - self.clock.server_ms(time.monotonic())) / 1000
        return dataclasses.replace(entry, expires_in=left, source="acquired")

    async def _uid(self, pool: PoolConfig) -> str:
        """The pool's uid, or one of its range that no live entry holds, held while the new ID can live."""
        if pool.uid_range is None:
            return str(pool.uid)
        lo, hi = pool.uid_range
        keys = pool_keys(self.config.redis.key_prefix, pool.name)
        for _ in range(UID_TRIES):
            candidates = [self.rng.randint(lo, hi) for _ in range(8)]
            call = functions.hold_uid_call(keys, hold_ms=pool.max_age_ms, candidates=candidates)
            uid = functions.text(await functions.aexecute(self.redis, call))
            if uid:
                return uid
        raise PoolEmpty(f"pool {pool.name!r}: no free uid found in uid_range {lo}..{hi}")

    async def warm(self) -> None:
        """The HTTP stack's first request loads anyio's event-loop backend (~30 ms): load it now instead."""
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.http.aclose()


def _channel(pool: PoolConfig, cname: str | None) -> str:
    """The cname to acquire for, checked as a pop would check it (the pool's own label for a template)."""
    if pool.is_template:
        if cname:
            raise CnameNotServed(f"pool {pool.name!r} labels each entry itself; pop without a cname")
        return pool.expand_cname()
    if not cname:
        raise CnameNotServed(f"pool {pool.name!r} serves named channels; give the cname to record")
    if pool.announced:
        if why := channels.problem(cname, pool.scene):
            raise CnameNotServed(f"pool {pool.name!r}: cname {cname!r} {why}")
    elif cname not in pool.slots:
        raise CnameNotServed(f"pool {pool.name!r} does not serve cname {cname!r}")
    return cname


def acquirer(config: Config | str | os.PathLike[str], client: redis.asyncio.Redis) -> OnDemand:
    """The factory registered as `ridpool.acquirers: agora`: an OnDemand for the daemon's config (a loaded Config,
    or a file validated here in full), with credentials from AGORA_CUSTOMER_ID / AGORA_CUSTOMER_SECRET and the
    client's own Redis connection (its mode, TLS and credentials)."""
    loaded = load_config(config) if isinstance(config, str | os.PathLike) else config
    credentials = load_credentials()
    if not structlog.is_configured():
        # An application that set up no logging of its own (the `ridpool pop` command among them) gets the
        # failures on stderr, scrubbed of the secret; its stdout stays its own.
        log_setup.configure(secrets=[credentials.customer_secret.get_secret_value()], level="warning")
    return OnDemand(loaded, credentials, client)
