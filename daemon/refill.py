"""One replica's refill work: lease what the pools lack, acquire it within the budget, store what arrives.

Every decision that involves other replicas is made in Redis: a lease (`ridpool_reserve`) is taken before each
acquire, so any number of replicas together never ask for more than a pool lacks; a failing pool is held with a
shared key, so all replicas back off together. This module only applies the planner's choices.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import replace

import redis.asyncio
import structlog
from ridpool import functions
from ridpool.daemon import planner
from ridpool.daemon.agora import AcquireClient, AcquireError, RateLimited, Rejected
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, PoolConfig
from ridpool.daemon.limiter import Budget
from ridpool.entry import Entry
from ridpool.errors import PoolUnavailable, RedisRefused, RidpoolError
from ridpool.functions import AddResult, Lease
from ridpool.keys import PoolKeys, pool_keys
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = structlog.get_logger("ridpool.refill")


def queue_cname(pool: PoolConfig, slot: str) -> str | None:
    """Template pools keep one queue; named channels one queue each."""
    return None if pool.is_template else slot


class Refiller:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        config: Config,
        acquirer: AcquireClient,
        budget: Budget,
        clock: ServerClock,
        *,
        replica_id: str,
        lease_seconds: float,
        rng: random.Random | None = None,
    ) -> None:
        self.redis = client
        self.pools = {p.name: p for p in config.pools}
        self.keys: dict[str, PoolKeys] = {p.name: pool_keys(config.redis.key_prefix, p.name) for p in config.pools}
        self.acquirer = acquirer
        self.budget = budget
        self.clock = clock
        self.replica_id = replica_id
        self.lease_ms = round(lease_seconds * 1000)
        self.rng = rng or random.Random()
        self.in_flight = asyncio.Semaphore(config.agora.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.leases: dict[str, PoolKeys] = {}  # token -> its pool: the leases this replica holds and renews
        self.stopping = False
        self.damaged: dict[str, str] = {}  # pool -> why its keys cannot be used; skipped until they can
        self.failed_now: set[str] = set()  # pools damaged during the current round

    # -- one round -----------------------------------------------------------------------------------------

    async def round(self) -> int:
        """Lease and start acquires until every slot is full or leased; returns the acquires started."""
        await self.clock.sync(self.redis)
        self.failed_now.clear()
        slots = await self._slots()
        started = 0
        while not self.stopping:
            slot = planner.next_slot(slots)
            if slot is None:
                break
            await self.in_flight.acquire()
            if self.stopping:
                self.in_flight.release()
                break
            try:
                leases = await self._reserve(slot)
            except RedisRefused as exc:
                leases = []
                await self.mark_damaged(slot.pool, exc)
            except BaseException:
                self.in_flight.release()
                raise
            i = slots.index(slot)
            if not leases:
                # Full, leased by other replicas, or held after failures: nothing more for it this round.
                self.in_flight.release()
                slots[i] = replace(slot, target=0)
                continue
            slots[i] = replace(slot, pending=slot.pending + 1)
            self._spawn(self.pools[slot.pool], slot.cname or "", leases[0])
            started += 1
        for pool in set(self.damaged) - self.failed_now:
            self.mark_sound(pool)
        return started

    async def _slots(self) -> list[planner.Slot]:
        slots = []
        for pool in self.pools.values():
            try:
                slots += [await self._sweep(pool, name) for name in pool.slots]
            except RedisRefused as exc:
                await self.mark_damaged(pool.name, exc)  # skipped this round; the other pools go on
        return slots

    async def _sweep(self, pool: PoolConfig, name: str) -> planner.Slot:
        cname = queue_cname(pool, name)
        call = functions.sweep_call(self.keys[pool.name], cname)
        state = functions.parse_sweep(await functions.aexecute(self.redis, call))
        if state.dropped:
            # Redis serves a data set other than the one these entries were stored in (a restart from RDB/AOF,
            # a failover): they may have been popped in the history it lost, so they were dropped.
            log.warning("refill.queue_dropped", pool=pool.name, cname=cname, dropped=state.dropped)
        return planner.Slot(pool.name, cname, pool.size, state.live)

    # -- damaged pools -------------------------------------------------------------------------------------

    async def mark_damaged(self, pool: str, exc: RedisRefused) -> None:
        """A pool whose keys Redis refuses (wrong type, permission, ...) is in error and skipped; others go on.

        Logged once per cause, and written to the pool's stats (state `error`) when that key itself is usable.
        """
        message = str(exc)
        self.failed_now.add(pool)
        if self.damaged.get(pool) != message:
            log.error("refill.pool_damaged", pool=pool, kind=type(exc).__name__, error=message)
        self.damaged[pool] = message
        with contextlib.suppress(RidpoolError, redis.RedisError), functions.reaching(self.redis):
            await self.redis.hset(self.keys[pool].stats, mapping={"state": "error", "last_error": message[:500]})

    def mark_sound(self, pool: str) -> None:
        if self.damaged.pop(pool, None) is not None:
            log.info("refill.pool_recovered", pool=pool)

    async def _reserve(self, slot: planner.Slot) -> list[Lease]:
        pool = self.pools[slot.pool]
        candidates: list[int] = []
        if pool.uid_range is not None:
            lo, hi = pool.uid_range
            candidates = [self.rng.randint(lo, hi) for _ in range(8)]
        call = functions.reserve_call(
            self.keys[pool.name],
            queue_cname=slot.cname,
            target=pool.size,
            cap=pool.max_in_flight,
            want=1,
            lease_ms=self.lease_ms,
            token_base=f"{self.replica_id}:{uuid.uuid4().hex[:12]}",
            uid_candidates=candidates,
        )
        return functions.parse_reserve(await functions.aexecute(self.redis, call))

    def _spawn(self, pool: PoolConfig, slot: str, lease: Lease) -> None:
        self.leases[lease.token] = self.keys[pool.name]
        task = asyncio.create_task(self._acquire(pool, slot, lease), name=f"acquire:{pool.name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- one acquire ---------------------------------------------------------------------------------------

    async def _acquire(self, pool: PoolConfig, slot: str, lease: Lease) -> None:
        keys = self.keys[pool.name]
        cname = pool.expand_cname() if pool.is_template else slot
        uid = lease.uid or str(pool.uid)
        try:
            try:
                got = await self.acquirer.acquire(
                    pool.appid,
                    cname,
                    uid,
                    pool.client_request(),
                    before_attempt=self.budget.take,
                    on_rate_limited=lambda exc: self._rate_limited(keys, exc),
                )
            except AcquireError as exc:
                await self._failed(pool, keys, lease, exc)
                return
            self.budget.succeeded()
            sent_ms = self.clock.server_ms(got.sent_at)
            entry = Entry(
                resource_id=got.resource_id,
                appid=pool.appid,
                cname=cname,
                uid=uid,
                pool=pool.name,
                sent_at_ms=sent_ms,
                expires_at_ms=sent_ms + round(pool.max_age * 1000),
                request_id=got.request_id,
            )
            await self._store(pool, keys, entry, lease, queue_cname(pool, slot))
        except RedisRefused as exc:
            await self.mark_damaged(pool.name, exc)  # the lease lapses by itself
        except (PoolUnavailable, redis.RedisError) as exc:
            # The lease lapses by itself; an acquired ID that could not be stored is lost, never half-written.
            log.warning("refill.redis_unavailable", pool=pool.name, error=str(exc))
        except asyncio.CancelledError:
            # Abandoned at shutdown: give the lease back at once so other replicas need not wait for it to lapse.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(functions.aexecute(self.redis, functions.release_call(keys, lease)), 0.5)
            raise
        finally:
            self.leases.pop(lease.token, None)
            self.in_flight.release()

    async def _store(self, pool: PoolConfig, keys: PoolKeys, entry: Entry, lease: Lease, cname: str | None) -> None:
        call = functions.add_call(keys, entry, queue_cname=cname, lease=lease.token, uid=lease.uid)
        # Redis may blink between acquire and store: the add is idempotent, so retry while the entry lives.
        retrying = AsyncRetrying(
            stop=stop_after_delay(min(30.0, pool.max_age)),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(PoolUnavailable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                result = functions.parse_add(await functions.aexecute(self.redis, call))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(keys.stats, "acquires", 1)
            pipe.hset(keys.stats, mapping={"state": "ok", "failures": 0})
            await pipe.execute()
        event = "refill.stored" if result in (AddResult.ADDED, AddResult.EXISTS) else "refill.not_stored"
        log.info(
            event, pool=pool.name, cname=entry.cname, uid=entry.uid, result=result.value, request_id=entry.request_id
        )

    async def _failed(self, pool: PoolConfig, keys: PoolKeys, lease: Lease, exc: AcquireError) -> None:
        await functions.aexecute(self.redis, functions.release_call(keys, lease))
        message = f"{exc.kind}: {exc}" + (f" (X-Request-Id {exc.request_id})" if exc.request_id else "")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(keys.stats, "errors", 1)
            pipe.hincrby(keys.stats, "failures", 1)
            pipe.hset(
                keys.stats,
                mapping={
                    "last_error": message[:500],
                    "state": "error" if isinstance(exc, Rejected) else "retrying",
                },
            )
            replies = await pipe.execute()
        hold = planner.hold_for(int(replies[1]))
        await self.redis.set(keys.hold, "1", px=round(hold * 1000))
        log.warning(
            "refill.failed",
            pool=pool.name,
            kind=exc.kind,
            status=exc.status,
            request_id=exc.request_id,
            error=str(exc),
            hold_seconds=hold,
        )

    async def _rate_limited(self, keys: PoolKeys, exc: RateLimited) -> None:
        wait = await self.budget.rate_limited()
        await self.redis.hincrby(keys.stats, "rate_limited", 1)
        log.warning("agora.rate_limited", request_id=exc.request_id, host=exc.host, cooldown_seconds=wait)

    async def renew(self) -> int:
        """Push the deadline of every lease still in use one lease length ahead; returns how many.

        Leases are short and renewed while their acquire runs, so a replica that dies holding some frees its
        share of the pool within one lease length. XX: a lease that lapsed meanwhile is not brought back.
        """
        if not self.leases:
            return 0
        deadline = self.clock.server_ms(time.monotonic()) + self.lease_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for token, keys in list(self.leases.items()):
                pipe.zadd(keys.inflight, {token: deadline}, xx=True, gt=True)
            for keys in {k.inflight: k for k in self.leases.values()}.values():
                pipe.pexpireat(keys.inflight, deadline, gt=True)
            await pipe.execute()
        return len(self.leases)

    # -- shutdown ------------------------------------------------------------------------------------------

    async def stop(self, grace: float) -> int:
        """Start no new acquire; give those in flight `grace` seconds, then abandon them. Returns how many."""
        self.stopping = True
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return len(pending)
