"""One replica's refill work: lease what the pools lack, acquire it within the budget, store what arrives.

Every decision that involves other replicas is made in Redis: a lease (`ridpool_reserve`) is taken before each
acquire, so any number of replicas together never ask for more than a pool lacks; a failing pool is held with a
shared key, so all replicas back off together. This module only applies the planner's choices.

The loop is continuous (see `Daemon`): a round leases what the targets lack, up to each pool's in-flight cap,
and the next round starts as soon as an acquire finishes (or after a tick), so the rate is set by the budget,
not by rounds. The targets come from demand sources (standing sizes, warm-ups, learned demand, and any source
added to `sources`), planned together by `planner.plan`; a source may name channels the config does not list.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import redis.asyncio
import structlog
from ridpool import functions
from ridpool.daemon import planner
from ridpool.daemon.agora import AcquireClient, AcquireError, Attempt, RateLimited
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, PoolConfig
from ridpool.daemon.limiter import Budget
from ridpool.daemon.metrics import ERROR_FIELD, Metrics
from ridpool.daemon.warmups import from_ms
from ridpool.entry import Entry
from ridpool.errors import PoolUnavailable, RedisRefused, RidpoolError
from ridpool.functions import AddResult, Lease
from ridpool.keys import PoolKeys, pool_keys
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = structlog.get_logger("ridpool.refill")


def queue_cname(pool: PoolConfig, slot: str) -> str | None:
    """Template pools keep one queue; named channels one queue each."""
    return None if pool.is_template else slot


def _log_failure(event: str, pool: PoolConfig, exc: AcquireError, **fields: object) -> None:
    """A rejection (the request itself is wrong: credentials, appid, channel) is an error an operator must act
    on; a failure Agora may not repeat is a warning."""
    (log.warning if exc.retryable else log.error)(
        event, pool=pool.name, kind=exc.kind, status=exc.status, request_id=exc.request_id, error=str(exc), **fields
    )


class DemandSource(Protocol):
    """Anything that makes pools want entries: asked every round for its demands at a server instant."""

    async def demands(self, now_ms: int) -> list[planner.Demand]: ...


class Standing:
    """The standing size of every configured channel, for ever."""

    def __init__(self, pools: Sequence[PoolConfig]) -> None:
        self.list = [planner.Demand(p.name, queue_cname(p, c), p.size, 0, None, "size") for p in pools for c in p.slots]

    async def demands(self, now_ms: int) -> list[planner.Demand]:
        return self.list


# Agora's latency before any acquire was seen: high, so that the first in-flight caps err towards keeping the
# budget busy. Every acquire then moves the estimate a fifth of the way to what it measured.
FIRST_LATENCY, LATENCY_WEIGHT = 1.0, 0.2


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
        metrics: Metrics | None = None,
        sources: Sequence[DemandSource] = (),
        next_instant: Callable[[str, int], int | None] | None = None,
    ) -> None:
        self.redis = client
        self.config = config
        self.metrics = metrics or Metrics()
        self.pools = {p.name: p for p in config.pools}
        self.max_age_ms = {p.name: p.max_age_ms for p in config.pools}
        self.sources: list[DemandSource] = [Standing(config.pools), *sources]
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
        self.wake = asyncio.Event()  # set when an acquire ends: the next round may lease again
        self.latency = FIRST_LATENCY
        self.targets: dict[planner.SlotKey, planner.Target] = {}  # the last round's plan
        self.next_instant = next_instant  # a pool's next warm-up instant (server ms), for status
        self.published: dict[str, tuple[int, str, str]] = {}  # what each pool's stats hash says of its target
        self.logged: dict[str, str] = {}  # the last reason logged per pool
        self.damaged: dict[str, str] = {}  # pool -> why its keys cannot be used; skipped until they can
        self.failed_now: set[str] = set()  # pools damaged during the current round
        # This round's warm-up part of each slot's target and the pool's pops when it was planned: pops made while
        # the round leases use it up in Redis (ridpool_reserve), so a popped warm-up entry is never acquired again.
        self.consuming: dict[planner.SlotKey, tuple[int, int]] = {}

    # -- one round -----------------------------------------------------------------------------------------

    async def plan(self) -> dict[planner.SlotKey, planner.Target]:
        """Every slot's target now, from all sources planned together."""
        await self.clock.sync(self.redis)
        now = self.clock.server_ms(time.monotonic())
        demands = [d for source in self.sources for d in await source.demands(now)]
        rate = planner.available_rate(self.config.sustained_rate, demands, self.max_age_ms)
        self.targets = planner.plan(
            [d for d in demands if d.pool in self.pools], now_ms=now, rate=rate, max_age_ms=self.max_age_ms
        )
        await self._publish_targets(now)
        return self.targets

    async def _publish_targets(self, now_ms: int) -> None:
        """Each pool's target now, why, and its next warm-up, in its stats hash (written when they change)."""
        totals: dict[str, list[tuple[int, str]]] = {name: [] for name in self.pools}
        for (pool, _), target in self.targets.items():
            totals[pool].append((target.count, target.reason))
        changed = {}
        for pool, parts in totals.items():
            count = sum(n for n, _ in parts)
            reason = max(parts, key=lambda p: p[0])[1] if parts else "size 0"
            at = self.next_instant(pool, now_ms) if self.next_instant else None
            state = (count, reason, "" if at is None else from_ms(at).isoformat(timespec="seconds"))
            if self.published.get(pool) != state:
                changed[pool] = state
            why = reason.split(" +")[0]  # what raises it, not by how much (a ramp changes that every round)
            if self.logged.get(pool) != why:
                self.logged[pool] = why
                log.info("refill.target", pool=pool, target=count, reason=reason, next_warmup=state[2])
        if not changed:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool, (count, reason, at_text) in changed.items():
                mapping = {"target": count, "target_reason": reason, "next_warmup": at_text}
                pipe.hset(self.keys[pool].stats, mapping=mapping)  # type: ignore[arg-type]
            replies = await pipe.execute(raise_on_error=False)
        for (pool, state), reply in zip(changed.items(), replies, strict=True):
            if isinstance(reply, redis.ResponseError):
                # A damaged stats key stops only its own pool, as in the rest of the round.
                await self.mark_damaged(pool, functions.refused(reply, f"pool {pool!r}"))
            else:
                self.published[pool] = state

    def cap(self, pool: PoolConfig) -> int:
        """The pool's in-flight cap across replicas: configured, or derived from the budget and the latency."""
        return pool.max_in_flight or planner.in_flight_cap(self.config.sustained_rate, self.latency)

    async def idle(self, timeout: float) -> None:
        """Wait until an acquire ends or `timeout` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(0.0, timeout))
        self.wake.clear()

    async def round(self) -> int:
        """Lease and start acquires until every slot is full or leased; returns the acquires started."""
        self.failed_now.clear()
        # Read before planning: a pop made between the two then counts twice (too few acquired for one round,
        # corrected by the next), never not at all (a popped warm-up entry acquired again).
        pops = await self._pops({p.name for p in self.pools.values() if p.warmups})
        slots = await self._slots(await self.plan(), pops)
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

    async def _slots(self, targets: dict[planner.SlotKey, planner.Target], pops: dict[str, int]) -> list[planner.Slot]:
        slots = []
        self.consuming.clear()
        for (pool, cname), target in targets.items():
            if target.count <= 0 or pool in self.failed_now:
                continue
            if pool in pops and target.consumable > 0:
                self.consuming[(pool, cname)] = (target.consumable, pops[pool])
            try:
                slots.append(await self._sweep(pool, cname, target.count))
            except RedisRefused as exc:
                await self.mark_damaged(pool, exc)  # skipped this round; the other pools go on
        return slots

    async def _pops(self, pools: set[str]) -> dict[str, int]:
        """Each pool's pops counter now: the round's warm-up targets are planned against it."""
        if not pools:
            return {}
        names = sorted(pools)
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hget(self.keys[name].stats, "pops")
                replies = await pipe.execute(raise_on_error=False)
        return {
            n: int(r or 0)
            for n, r in zip(names, replies, strict=True)
            if r is None or (isinstance(r, bytes | str) and r.isdigit())
        }

    async def _sweep(self, pool: str, cname: str | None, target: int) -> planner.Slot:
        call = functions.sweep_call(self.keys[pool], cname)
        state = functions.parse_sweep(await functions.aexecute(self.redis, call))
        if state.dropped:
            # Redis serves a data set other than the one these entries were stored in (a restart from RDB/AOF,
            # a failover): they may have been popped in the history it lost, so they were dropped.
            log.warning("refill.queue_dropped", pool=pool, cname=cname, dropped=state.dropped)
        return planner.Slot(pool, cname, target, state.live)

    # -- damaged pools -------------------------------------------------------------------------------------

    async def mark_damaged(self, pool: str, exc: RidpoolError) -> None:
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
        consumable, pops_seen = self.consuming.get((slot.pool, slot.cname), (0, 0))
        call = functions.reserve_call(
            self.keys[pool.name],
            queue_cname=slot.cname,
            target=slot.target,
            cap=self.cap(pool),
            want=1,
            lease_ms=self.lease_ms,
            token_base=f"{self.replica_id}:{uuid.uuid4().hex[:12]}",
            uid_candidates=candidates,
            announced=pool.announced,
            consumable=consumable,
            pops_seen=pops_seen,
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
        granted_at = [0.0]

        async def take() -> None:
            await self._take(pool)
            granted_at[0] = time.monotonic()

        try:
            try:
                got = await self.acquirer.acquire(
                    pool.appid,
                    cname,
                    uid,
                    pool.client_request(),
                    before_attempt=take,
                    on_rate_limited=lambda exc: self._rate_limited(pool, keys, exc),
                    after_attempt=lambda attempt: self._attempted(pool, keys, cname, attempt),
                )
            except AcquireError as exc:
                await self._failed(pool, keys, lease, exc)
                return
            self.budget.succeeded()
            self.latency += LATENCY_WEIGHT * (time.monotonic() - granted_at[0] - self.latency)
            entry = got.entry(pool, cname, uid, self.clock.server_ms(got.sent_at))
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
            self.wake.set()

    async def _store(self, pool: PoolConfig, keys: PoolKeys, entry: Entry, lease: Lease, cname: str | None) -> None:
        call = functions.add_call(
            keys, entry, queue_cname=cname, lease=lease.token, uid=lease.uid, announced=pool.announced
        )
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

    async def _take(self, pool: PoolConfig) -> None:
        started = time.monotonic()
        await self.budget.take()
        self.metrics.budget_wait.labels(pool.name).observe(time.monotonic() - started)

    async def _attempted(self, pool: PoolConfig, keys: PoolKeys, cname: str, attempt: Attempt) -> None:
        """Every HTTP attempt: timed; a failed one counted in `errors` (and `errors:<kind>`), retried or not."""
        self.metrics.acquire_duration.labels(pool.name).observe(attempt.seconds)
        exc = attempt.error
        if exc is None:
            return
        _log_failure("agora.acquire_failed", pool, exc, host=attempt.host, cname=cname)
        # Counting is worth less than the acquire it would abort: a Redis blink loses the count, not the ID.
        with contextlib.suppress(PoolUnavailable, redis.RedisError):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hincrby(keys.stats, "errors", 1)
                pipe.hincrby(keys.stats, ERROR_FIELD + exc.kind, 1)
                await pipe.execute()

    async def _failed(self, pool: PoolConfig, keys: PoolKeys, lease: Lease, exc: AcquireError) -> None:
        """The acquire gave up (attempts spent, or rejected): free its lease and hold the pool on every replica."""
        await functions.aexecute(self.redis, functions.release_call(keys, lease))
        message = f"{exc.kind}: {exc}" + (f" (X-Request-Id {exc.request_id})" if exc.request_id else "")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(keys.stats, "failures", 1)  # in a row: reset by the next stored entry
            pipe.hset(
                keys.stats,
                mapping={"last_error": message[:500], "state": "retrying" if exc.retryable else "error"},
            )
            replies = await pipe.execute()
        hold = planner.hold_for(int(replies[0]))
        await functions.aexecute(self.redis, functions.hold_call(keys, hold))
        _log_failure("refill.failed", pool, exc, hold_seconds=hold)

    async def _rate_limited(self, pool: PoolConfig, keys: PoolKeys, exc: RateLimited) -> None:
        wait = await self.budget.rate_limited()
        await self.redis.hincrby(keys.stats, "rate_limited", 1)
        log.warning(
            "agora.rate_limited", pool=pool.name, request_id=exc.request_id, host=exc.host, cooldown_seconds=wait
        )

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
