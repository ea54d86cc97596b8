"""The per-minute job of `auto_max_age`: decide each pool's effective max_age from the starters' reports, store it
where every pop reads it, and plan and refill for it.

Every replica runs it (`Timing.freshen`); one decides each minute: the decision is made from Redis state alone
(the value and since when, from the pool's meta hash; the reports of the last hour, from its starts hash), and
`ridpool_freshen` stores it only for the first replica of a minute (the others get DECIDED and take the stored
value), and never for a replica whose configuration is not the published one. A change is logged once, by the
replica that stored it, as `freshness.changed` with the figures it turned on.

A stored decision holds for `HOLD_MS` unless stored again: if no daemon decides any more, pops go back to the
configured max_age by themselves. Pools with auto_max_age off get any decision left from an earlier
configuration removed (once per replica start), so that nothing changes in their behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import redis.asyncio
import structlog
from ridpool import ages, functions, stats
from ridpool.daemon import freshness
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, PoolConfig
from ridpool.keys import PoolKeys, pool_keys

log = structlog.get_logger("ridpool.freshness")

HOLD_MS = 300_000  # a decision holds five minutes unless stored again (every minute while a daemon runs)
MINUTE_MS = 60_000


class Freshener:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        config: Config,
        clock: ServerClock,
        *,
        fingerprints: Mapping[str, str],
        apply: Callable[[str, float | None], None],
        hold_ms: int = HOLD_MS,
    ) -> None:
        """`fingerprints`: each pool's published configuration (the Publisher's); `apply(pool, seconds or None)`:
        told the effective max_age after every look (the refill plans with it)."""
        self.redis = client
        self.clock = clock
        self.pools = list(config.pools)
        self.keys: dict[str, PoolKeys] = {p.name: pool_keys(config.redis.key_prefix, p.name) for p in config.pools}
        self.fingerprints = fingerprints
        self.apply = apply
        self.hold_ms = hold_ms
        self.cleared: set[str] = set()  # pools without auto_max_age whose leftover decision was looked for

    async def run(self) -> None:
        """One look at every pool (the job); nothing once every pool without auto_max_age was cleared."""
        for pool in self.pools:
            if pool.auto_max_age:
                await self.look(pool)
            elif pool.name not in self.cleared:
                await self.clear(pool)

    async def read(self, pool: PoolConfig) -> tuple[int, ages.Effective | None]:
        """Server time and the stored decision, in one round trip."""
        keys = self.keys[pool.name]
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.hmget(keys.meta, list(ages.FRESH_FIELDS))
                time_reply, fields = await pipe.execute()
        now = stats.server_ms(time_reply)
        return now, ages.stored(fields, now)

    async def look(self, pool: PoolConfig) -> None:
        """Decide this minute's value unless a replica did, store it, and apply what is stored."""
        now, stored = await self.read(pool)
        minute = now // MINUTE_MS
        if stored is not None and stored.minute >= minute:
            self.apply(pool.name, stored.max_age)
            return
        with functions.reaching(self.redis):
            starts = stats.decode_hash(await self.redis.hgetall(self.keys[pool.name].starts))
        current = stored.max_age if stored is not None else pool.max_age
        since = stored.since if stored is not None else 0  # 0: longer ago than any window
        decision = freshness.decide(
            current, ages.per_minute(starts), now_minute=minute, policy=freshness.Policy.of(pool), since=since
        )
        probe = decision.probe
        call = functions.freshen_call(
            self.keys[pool.name],
            fingerprint=self.fingerprints[pool.name],
            minute=minute,
            max_age_ms=round(decision.max_age * 1000),
            since=minute if decision.changed else since,
            probe=probe.kind if probe else "",
            share=probe.share if probe else 0.0,
            up_to_ms=round((probe.up_to or 0) * 1000) if probe else 0,
            hold_ms=self.hold_ms,
            reason=decision.reason,
        )
        outcome = functions.parse_freshen(await functions.aexecute(self.redis, call))
        if outcome == "STORED":
            if decision.changed:
                log.info("freshness.changed", pool=pool.name, previous=current, **decision.fields())
            self.apply(pool.name, decision.max_age)
        elif outcome == "DECIDED":  # another replica decided this minute meanwhile: take its value
            _, stored = await self.read(pool)
            self.apply(pool.name, stored.max_age if stored is not None else None)
        # CONFLICT: another configuration is published (the publisher says so); this replica decides nothing.

    async def clear(self, pool: PoolConfig) -> None:
        """auto_max_age off: remove a decision an earlier configuration left, so pops offer up to max_age."""
        _, stored = await self.read(pool)
        if stored is not None:
            call = functions.freshen_call(
                self.keys[pool.name], fingerprint=self.fingerprints[pool.name], minute=0, max_age_ms=None
            )
            if functions.parse_freshen(await functions.aexecute(self.redis, call)) == "CONFLICT":
                return  # not ours to clear; looked at again on the next run
        self.cleared.add(pool.name)
        self.apply(pool.name, None)
