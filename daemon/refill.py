"""One replica's refill work: lease what the pools lack, acquire it within the budget, store what arrives.

Every decision that involves other replicas is made in Redis: a lease (`ridpool_reserve`) is taken before each
acquire, so any number of replicas together never ask for more than a pool lacks; a failing pool is held with a
shared key, so all replicas back off together. This module only applies the planner's choices.

The loop is continuous (`Refiller.run`): a round asks every demand source (`daemon/sources.py`) for its demands,
plans them together (`planner.plan`), and leases what the targets lack up to the replica's free acquire slots,
without waiting for any: the next round starts as soon as an acquire finishes, when a channel's oldest entry is
due to expire or a consumable window begins, or after a tick, so the rate is set by the budget, not by rounds, and
a pool that becomes short is leased for within a round whatever the others are doing.

A round costs what changed, not what is stored (`daemon/model.py` keeps what this replica knows of every channel
between rounds): one pipelined look at every pool's counters, one `ridpool_sweep` per pool of named or announced
channels (which reads the pool's change feed: the channels popped or announced since), sweeps of only the
channels that changed or whose oldest entry expired, and one batched `ridpool_reserve` per pool with something to
lease. No source is known here by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import redis.asyncio
import structlog
from ridpool import functions
from ridpool.daemon import freshness, planner, sending, ticker
from ridpool.daemon.agora import AcquireClient, AcquireError, Attempt, RateLimited
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, PoolConfig
from ridpool.daemon.health import PoolDamage, RedisHealth
from ridpool.daemon.limiter import Budget
from ridpool.daemon.metrics import ERROR_FIELD, Metrics
from ridpool.daemon.model import Model, Slot, Want
from ridpool.daemon.publish import Publisher, identity_of
from ridpool.daemon.sources import DemandSource, queue_cname
from ridpool.entry import Entry
from ridpool.errors import PoolUnavailable, RedisRefused, RidpoolError
from ridpool.functions import CHUNK, AddResult, Lease
from ridpool.keys import PoolKeys, pool_keys
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

log = structlog.get_logger("ridpool.refill")


def _log_failure(event: str, pool: PoolConfig, exc: AcquireError, **fields: object) -> None:
    """A rejection (the request itself is wrong: credentials, appid, channel) is an error an operator must act
    on; a failure Agora may not repeat is a warning."""
    (log.warning if exc.retryable else log.error)(
        event, pool=pool.name, kind=exc.kind, status=exc.status, request_id=exc.request_id, error=str(exc), **fields
    )


class SourceFailed(RidpoolError):
    """A demand source could not read what a pool needs: that pool is skipped this round."""


# How long before a consumable window begins its baseline is taken (the loop wakes for it): pops in this sliver
# count against the window, which errs towards acquiring too little rather than twice for one start.
BASELINE_EARLY_MS = 100
# A window's baseline is kept this long after the window began: windows last at most a day (config rule).
BASELINE_KEPT_MS = 86_400_000 + 3_600_000
# An entry of a pending announcement with less life than this is retired and acquired again: enough for a
# replacement to be acquired and stored before it dies, and for a starter's min_ttl of a few seconds.
RETIRE_AHEAD_MS = 10_000
# The change feed keeps a minute: a replica that has not read it for longer looks at every channel again.
FEED_KEEP_MS = 60_000
# A channel another replica leased for (or whose lease was refused) is asked about again this much later.
LATER_MS = 1_000
# Channels swept in one round at most (at start-up a pool of many channels is swept over several rounds).
SWEEP_PER_ROUND = 5 * CHUNK
# Every channel is looked at again this often, whatever the change feed says (a queue deleted by hand).
FULL_LOOK_MS = 600_000

# Server time is read again this often (the offset to the monotonic clock drifts by microseconds a second).
CLOCK_SYNC_S = 1.0

# Agora's latency before any acquire was seen: high, so that the first in-flight caps err towards keeping the
# budget busy. Every acquire then moves the estimate a fifth of the way to what it measured.
FIRST_LATENCY, LATENCY_WEIGHT = 1.0, 0.2


def config_slots(pool: PoolConfig) -> tuple[Slot, ...]:
    """The queues a pool-wide demand is for: the template pool's one queue, or each configured channel."""
    return tuple(queue_cname(pool, c) for c in pool.slots)


class Refiller:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        config: Config,
        acquirer: AcquireClient,
        budget: Budget,
        clock: ServerClock,
        *,
        sources: Sequence[DemandSource],
        health: RedisHealth,
        damage: PoolDamage,
        publisher: Publisher,
        replica_id: str,
        lease_seconds: float,
        tick: float,
        renew_every: float,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = client
        self.config = config
        self.metrics = metrics or Metrics()
        self.pools = {p.name: p for p in config.pools}
        self.max_age_ms = {p.name: p.max_age_ms for p in config.pools}  # the life each pool plans with
        # auto_max_age: how much of an entry's life is past the pool's effective max_age (not counted live)
        self.stale_ms = dict.fromkeys(self.pools, 0)
        self.channels = config.channels
        self.sources = list(sources)
        self.keys: dict[str, PoolKeys] = {p.name: pool_keys(config.redis.key_prefix, p.name) for p in config.pools}
        self.acquirer = acquirer
        self.budget = budget
        self.clock = clock
        self.health = health
        self.damage = damage
        self.publisher = publisher
        self.replica_id = replica_id
        self.lease_ms = round(lease_seconds * 1000)
        self.tick = tick
        self.renew_every = renew_every
        self.rng = rng or random.Random()
        self.max_in_flight = config.agora.in_flight  # this replica's concurrent acquires
        self.tasks: set[asyncio.Task[None]] = set()
        self.leases: dict[str, PoolKeys] = {}  # token -> its pool: the leases this replica holds and renews
        self.stopping = False
        self.wake = asyncio.Event()  # set when an acquire ends: the next round may lease again
        self.latency = FIRST_LATENCY
        self.synced = self.ensured = -CLOCK_SYNC_S  # monotonic times server time, the metadata were last looked at
        self.model = Model({p.name: config_slots(p) for p in config.pools})
        # Slow start: a pool sends one request at a time (all replicas together: the cap is checked in Redis) until
        # one succeeds, at start-up (`proven`: pools whose acquire succeeded here) and while its stats hash counts
        # acquires given up in a row (`failing`, from any replica): a wrong secret is not sent a round at once.
        self.proven: set[str] = set()
        self.failing: set[str] = set()
        self.demands: list[planner.Demand] = []  # the last round's demands, as what is left of them
        self.targets: dict[planner.SlotKey, planner.Target] = {}  # the last round's plan, per slot
        self.baseline: dict[tuple[str, int], int] = {}  # (pool, window start) -> the pool's pops then
        self.phases: dict[tuple[str, int], float] = {}  # (pool, burst instant) -> when its start phase ends
        self.published: dict[str, dict[str, str]] = {}  # what each pool's stats hash says of its plan
        self.logged: dict[str, str] = {}  # the last reason logged per pool
        self.changed: dict[str, set[str]] = {}  # per pool, the channels the change feed named this round
        self.between_rounds: list[Callable[[], None]] = []  # run before the next round (see daemon/reload.py)
        # Metadata rewritten (a Redis that lost it, a changed config): write the target fields again, and look at
        # every channel again (the queues may be gone too).
        publisher.listeners.append(self.published.clear)
        publisher.listeners.append(self.resync)

    @property
    def in_flight(self) -> int:
        """Acquires this replica has running."""
        return len(self.tasks)

    def set_max_age(self, pool: str, effective: float | None) -> None:
        """The pool's effective max_age (s; None: none decided): plan and refill for the shorter life."""
        config = self.pools[pool]
        self.max_age_ms[pool] = freshness.planning_max_age_ms(config, effective)
        self.stale_ms[pool] = config.max_age_ms - self.max_age_ms[pool]

    def resync(self) -> None:
        """Look at every channel of every pool again (Redis lost or replaced what this replica knew)."""
        for pool in self.pools:
            self.model.resync(pool)

    # -- the loop ------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds back to back until `stop` (or `stop()`): each after an acquire ends, when a channel is due, at
        a consumable window's start, or after a tick; the leases in use are renewed every `renew_every`."""
        renewing = asyncio.create_task(
            ticker.every(self.renew_every, functools.partial(self.health.guarded, "renew", self.renew), stop=stop)
        )
        try:
            while not stop.is_set() and not self.stopping:
                while self.between_rounds:  # a reload's changes, applied where no round is half done
                    self.between_rounds.pop(0)()
                await self.health.guarded("refill", self._round)
                await self.idle(self._wait())
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _round(self) -> None:
        # A Redis that restarted empty lost the metadata: put it back before pops meet UnknownPool (looked at once
        # a second, like server time: a round after every acquire need not ask).
        if self.clock.monotonic() - self.ensured >= CLOCK_SYNC_S:
            self.ensured = self.clock.monotonic()
            if await self.publisher.ensure():
                self.resync()
        await self.round()

    def _wait(self) -> float:
        """Until the next round: a tick, or less when a channel is due or a consumable window begins sooner (its
        baseline is taken at its start, see `_baselines`)."""
        if self.clock.offset_ms is None:
            return self.tick
        now = self.clock.now_ms()
        starts = [
            d.at_ms - BASELINE_EARLY_MS
            for d in self.demands
            if d.consumable and d.until_ms is not None and d.at_ms - BASELINE_EARLY_MS > now
        ]
        due = self.model.next_due_ms()
        return min([self.tick, *((at - now) / 1000 for at in [*starts, *([due] if due is not None else [])])])

    async def idle(self, timeout: float) -> None:
        """Wait until an acquire ends or `timeout` seconds pass."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), max(0.0, timeout))
        self.wake.clear()

    # -- one round -----------------------------------------------------------------------------------------

    async def round(self) -> int:
        """Look at what changed, plan, and lease what the channels lack up to this replica's free acquire slots;
        returns the acquires started. Never waits for an acquire: what is left is leased by the next round."""
        self.damage.begin_round()
        # Read before planning: a pop made between the two then counts twice (too few acquired for one round,
        # corrected by the next), never not at all (a popped entry of a consumable demand acquired again).
        pops = await self._look()
        await self._sweep()  # what changed: the feed, the channels due, a template pool's queue
        await self.plan(pops)  # the sources hear what the feed said
        await self._sweep_unknown()  # channels with a target never looked at (new, or after a resync)
        started = await self._lease(pops)
        self.damage.end_round()
        return started

    async def _look(self) -> dict[str, int]:
        """Every pool's pops counter, in one round trip; server time again when the last reading is old."""
        if self.clock.offset_ms is None or self.clock.monotonic() - self.synced >= CLOCK_SYNC_S:
            await self.clock.sync(self.redis)
            self.synced = self.clock.monotonic()
        names = list(self.pools)
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hmget(self.keys[name].stats, "pops", "failures")
                replies = await pipe.execute(raise_on_error=False)
        # A damaged stats key (an error reply) leaves its pool out: the round skips it.
        looked = {n: r for n, r in zip(names, replies, strict=True) if not isinstance(r, Exception)}
        self.failing = {n for n, (_, failures) in looked.items() if failures not in (None, b"0", "0")}
        return {n: int(pops or 0) for n, (pops, _) in looked.items() if pops is None or pops.isdigit()}

    async def _sweep(self) -> None:
        """Bring the model up to date with what changed: each pool's change feed (and the channels it names), the
        channels whose oldest entry expired, a template pool's one queue (every round: one small call per pool
        tells its pops, and a queue deleted by hand, at once); and every channel every FULL_LOOK_MS, so that a
        named channel's queue deleted by hand is noticed too."""
        now = self.clock.now_ms()
        due = self.model.due_slots(now)
        self.changed = {}
        for name, pool in self.pools.items():
            if name in self.damage:
                continue
            model = self.model.pools[name]
            if now - model.looked_ms >= FULL_LOOK_MS:
                self.model.resync(name)
                model.looked_ms = now
            wanted = list(dict.fromkeys([*due.get(name, []), *([None] if pool.is_template else [])]))
            try:
                changed = await self._sweep_pool(pool, wanted, feed=not pool.is_template, due=set(due.get(name, [])))
                if changed:
                    self.changed[name] = changed
                    again = [c for c in changed if c not in wanted]
                    if again:
                        await self._sweep_pool(pool, again, feed=False)
            except RedisRefused as exc:
                await self.damage.mark(name, exc)  # skipped this round; the other pools go on

    async def _sweep_unknown(self) -> None:
        """The channels with a target this replica has not looked at yet, SWEEP_PER_ROUND at most a round (a pool
        of many channels is looked at over a few rounds after a start)."""
        budget = SWEEP_PER_ROUND
        for name, pool in self.pools.items():
            if name in self.damage or budget <= 0:
                continue
            wanted = self.model.unknown(name)[:budget]
            if not wanted:
                continue
            budget -= len(wanted)
            try:
                await self._sweep_pool(pool, wanted, feed=False)
            except RedisRefused as exc:
                await self.damage.mark(name, exc)

    async def _sweep_pool(
        self, pool: PoolConfig, slots: Sequence[Slot], *, feed: bool, due: set[Slot] | None = None
    ) -> set[str]:
        """One pool's sweep calls: its change feed since this replica's mark (when `feed`), and the slots asked
        about, CHUNK at a time. Returns the channels the feed named."""
        model = self.model.pools[pool.name]
        ahead = RETIRE_AHEAD_MS if pool.announced and not self.starting(pool.name, self.clock.now_ms()) else 0
        stale = self.stale_ms[pool.name]
        changed: set[str] = set()
        pending, reading = list(slots), feed
        while True:
            chunk, pending = pending[:CHUNK], pending[CHUNK:]
            call = functions.sweep_call(
                self.keys[pool.name],
                chunk,
                since_ms=max(model.since_ms, 0) if reading else -1,
                retire_ms=ahead,
                keep_ms=FEED_KEEP_MS,
                stale_ms=stale,
            )
            swept = functions.parse_sweep(await functions.aexecute(self.redis, call))
            if swept.data_set != model.data_set:
                if model.data_set:
                    # Another Redis process serves the data now (a restore, a failover): what this replica knew
                    # of the queues is of the old one. The sweeps drop what cannot be trusted; look again.
                    log.info("refill.data_set_changed", pool=pool.name)
                    self.model.resync(pool.name)
                model.data_set = swept.data_set
            if reading:
                if model.since_ms < swept.now_ms - FEED_KEEP_MS:
                    # Never read, or not for longer than the feed keeps: what it said meanwhile may be lost.
                    self.model.resync(pool.name)
                fresh = [(c, at) for c, at in swept.changed if at > model.since_ms or c not in model.seen_at_since]
                changed.update(c for c, _ in fresh)
                if not swept.changed:
                    # Read up to now: anything written after this read is scored now or later.
                    model.since_ms, model.seen_at_since = swept.now_ms, set()
                else:
                    top = max(at for _, at in swept.changed)
                    if top > model.since_ms:
                        model.since_ms, model.seen_at_since = top, {c for c, at in swept.changed if at == top}
                    else:
                        model.seen_at_since.update(c for c, at in swept.changed if at == top)
                reading = swept.more  # more of the feed to read: go round again
            for slot, state in zip(chunk, swept.states, strict=True):
                if state.dropped:
                    # Redis serves a data set other than the one these entries were stored in (a restart from
                    # RDB/AOF, a failover): they may have been popped in the history it lost, so they were dropped.
                    log.warning("refill.queue_dropped", pool=pool.name, cname=slot, dropped=state.dropped)
                self.model.swept(
                    pool.name,
                    slot,
                    state.live,
                    state.oldest_expires_at_ms,
                    due_ahead_ms=ahead + stale,
                    was_due=due is not None and slot in due,
                )
            if not pending and not reading:
                return changed

    async def plan(self, pops: Mapping[str, int] | None = None) -> dict[planner.SlotKey, planner.Target]:
        """Every slot's target now, from all sources planned together; `pops`: each pool's pops counter, read
        before (the round reads it first; by itself, plan reads it now)."""
        if pops is None:
            pops = await self._look()
        now = self.clock.now_ms()
        demands = [d for d in await self._demands(now) if d.pool in self.pools]
        popped = await self._baselines(demands, pops, now)
        self.demands = planner.left(demands, popped, now_ms=now, channels=self.channels)
        self._remember_start_phases(now)
        rate = planner.available_rate(self.config.sustained_rate, self.demands, self.max_age_ms, self.channels)
        self.targets = planner.plan(
            self.demands,
            now_ms=now,
            rate=rate,
            max_age_ms=self.max_age_ms,
            channels=self.channels,
            start_rate=self.config.sustained_rate,
            begun=[(at, end) for (_, at), end in self.phases.items() if at <= now],
        )
        own: dict[str, dict[Slot, planner.Target]] = defaultdict(dict)
        for (pool, cname), target in self.targets.items():
            if cname is not None:
                own[pool][cname] = target
        for pool in self.pools:
            every = self.targets.get((pool, None), planner.Target(0, "size 0"))
            self.model.set_targets(pool, every, own.get(pool, {}))
        await self._publish_targets(now)
        return self.targets

    def _remember_start_phases(self, now_ms: int) -> None:
        """Each pool's bursts still to come, as start phases: from the instant, the burst's entries are started in
        order at the sustained rate (the budget is the starters'). Kept from before the instant (when the burst's
        whole size is known) until no later burst's span can reach back into it (a max_age after it ends), so that
        a later burst's span stays what it was planned to be before the instant."""
        ahead = [d for d in self.demands if d.at_ms > now_ms]
        self.phases.update(planner.start_phases(ahead, self.channels, self.config.sustained_rate))
        reach = max(self.max_age_ms.values(), default=0)
        self.phases = {k: end for k, end in self.phases.items() if end + reach > now_ms}

    def starting(self, pool: str, now_ms: int) -> bool:
        """Whether one of the pool's bursts is in its start phase: its entries will be reached in turn, so none is
        retired to be acquired again meanwhile (that would take the starters' budget and waste the entry)."""
        return any(p == pool and at <= now_ms < end for (p, at), end in self.phases.items())

    async def _demands(self, now_ms: int) -> list[planner.Demand]:
        """What every source asks for now; a source that fails for a pool fails that pool only (skipped this
        round, logged once per change of its error), the other pools go on."""
        out: list[planner.Demand] = []
        for source in self.sources:
            for pool in source.pools:
                if pool not in self.pools or pool in self.damage:
                    continue
                try:
                    await source.refresh(pool, now_ms, frozenset(self.changed.get(pool, ())))
                except RedisRefused as exc:
                    await self.damage.mark(pool, exc)
                    continue
                except PoolUnavailable:
                    raise
                except Exception as exc:  # the source's own failure: its pool's alone
                    why = f"{type(source).__name__}: {type(exc).__name__}: {exc}"
                    await self.damage.mark(pool, SourceFailed(why), event="refill.source_failed")
                    continue
                out += source.demands(pool, now_ms)
        return out

    async def _baselines(
        self, demands: Sequence[planner.Demand], pops: Mapping[str, int], now_ms: int
    ) -> dict[tuple[str, int], int]:
        """The pool's pops since each consumable window began, from its baseline: the pool's pops counter at the
        window's start, recorded once in Redis (HSETNX: the first replica's stays) and read once per replica.

        The hash holds only the windows that may still run (one day at most, the longest window), however often
        a window recurs."""
        popped: dict[tuple[str, int], int] = {}
        wanted = {(d.pool, d.at_ms) for d in planner.running_consumable(demands, now_ms, BASELINE_EARLY_MS)}
        for pool, at in sorted(wanted):
            if pool not in pops:
                continue  # its counter is unreadable (a damaged stats key): the round skips the pool
            if (pool, at) not in self.baseline:
                keys = self.keys[pool]
                with functions.reaching(self.redis):
                    async with self.redis.pipeline(transaction=True) as pipe:
                        pipe.hsetnx(keys.baselines, str(at), pops[pool])
                        pipe.hget(keys.baselines, str(at))
                        pipe.hkeys(keys.baselines)
                        pipe.pexpireat(keys.baselines, at + BASELINE_KEPT_MS, gt=True)
                        pipe.pexpireat(keys.baselines, at + BASELINE_KEPT_MS, nx=True)
                        _, base, fields, _, _ = await pipe.execute()
                    stale = [f for f in fields if int(f) + BASELINE_KEPT_MS < now_ms]
                    if stale:
                        await self.redis.hdel(keys.baselines, *stale)
                self.baseline[(pool, at)] = int(base)
            popped[(pool, at)] = max(0, pops[pool] - self.baseline[(pool, at)])
        self.baseline = {k: v for k, v in self.baseline.items() if k[1] + BASELINE_KEPT_MS >= now_ms}
        return popped

    def total(self, pool: str) -> tuple[int, str]:
        """The pool's target now, all channels together, and why (the largest reason)."""
        model = self.model.pools[pool]
        count = model.every.count * len(model.config_slots)
        parts = [(model.every.count, model.every.reason)] if model.config_slots else []
        for slot, own in model.own.items():
            n = own.count + (self.model.channel(pool, slot).live if own.beyond_live else 0)
            count += n
            parts.append((n, own.reason))
        return count, max(parts, key=lambda p: p[0])[1] if parts else "size 0"

    async def _publish_targets(self, now_ms: int) -> None:
        """Each pool's target now, why, and what its sources want shown, in its stats hash (when they change)."""
        changed: dict[str, dict[str, str]] = {}
        for pool in self.pools:
            if pool in self.damage.apart:
                continue  # its owner's plan stands in the stats hash, not this replica's
            count, reason = self.total(pool)
            fields = {"target": str(count), "target_reason": reason}
            for source in self.sources:
                if pool in source.pools:
                    fields.update(source.notes(pool, now_ms))
            if self.published.get(pool) != fields:
                changed[pool] = fields
            why = reason.split(" +")[0]  # what raises it, not by how much (a ramp changes that every round)
            if self.logged.get(pool) != why:
                self.logged[pool] = why
                log.info(
                    "refill.target", pool=pool, target=count, reason=reason, next_warmup=fields.get("next_warmup", "")
                )
        if not changed:
            return
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for pool, fields in changed.items():
                    pipe.hset(self.keys[pool].stats, mapping=fields)  # type: ignore[arg-type]
                replies = await pipe.execute(raise_on_error=False)
        for (pool, fields), reply in zip(changed.items(), replies, strict=True):
            if isinstance(reply, redis.ResponseError):
                # A damaged stats key stops only its own pool, as in the rest of the round.
                await self.damage.mark(pool, functions.refused(reply, f"pool {pool!r}"))
            else:
                self.published[pool] = fields

    def cap(self, pool: PoolConfig) -> int:
        """The pool's in-flight cap across replicas: configured, or derived from the budget and the latency; 1
        while the pool starts slowly (see `proven`)."""
        if pool.name not in self.proven or pool.name in self.failing:
            return 1
        return pool.max_in_flight or planner.in_flight_cap(self.config.sustained_rate, self.latency)

    async def _lease(self, pops: Mapping[str, int]) -> int:
        """Lease for the channels that lack the most, up to this replica's free acquire slots: one batched
        ridpool_reserve per pool; what Redis refuses is weighed again later, never retried at once."""
        now = self.clock.now_ms()
        self.model.wake(now)
        free = self.max_in_flight - len(self.tasks)
        if free <= 0 or self.stopping:
            return 0
        wants, order = self.model.wants(free, now)
        by_pool: dict[str, list[Want]] = defaultdict(list)
        for want in wants:
            by_pool[want.pool].append(want)
        granted: dict[tuple[str, Slot], list[Lease]] = {}
        answered: set[tuple[str, Slot]] = set()
        try:
            for name, asked in by_pool.items():
                if name in self.damage:
                    continue
                for i in range(0, len(asked), CHUNK):
                    chunk = asked[i : i + CHUNK]
                    try:
                        reserved = await self._reserve(self.pools[name], chunk, pops.get(name))
                    except RedisRefused as exc:
                        await self.damage.mark(name, exc)
                        break
                    granted.update(self._granted(self.pools[name], chunk, reserved, now))
                    answered.update((name, w.slot) for w in chunk)
        finally:
            # A want Redis did not answer (a damaged pool, Redis down) is weighed again, never forgotten.
            for want in wants:
                if (want.pool, want.slot) not in answered:
                    self.model.evaluate(want.pool, want.slot)
        # Acquires start in the order the leases were chosen (emptiest first, one at a time), so the budget serves
        # the channels side by side.
        started = 0
        for name, slot in order:
            leases = granted.get((name, slot))
            if leases:
                self._spawn(self.pools[name], slot, leases.pop(0))
                started += 1
        return started

    async def _reserve(self, pool: PoolConfig, wants: Sequence[Want], pops: int | None) -> functions.Reserved:
        candidates: list[int] = []
        if pool.uid_range is not None:
            lo, hi = pool.uid_range
            candidates = [self.rng.randint(lo, hi) for _ in range(2 * sum(w.want for w in wants) + 6)]
        call = functions.reserve_call(
            self.keys[pool.name],
            [functions.Want(w.slot, w.target, w.consumable if pops is not None else 0, w.want) for w in wants],
            cap=self.cap(pool),
            lease_ms=self.lease_ms,
            token_base=f"{self.replica_id}:{uuid.uuid4().hex[:12]}",
            pops_seen=pops or 0,
            stale_ms=self.stale_ms[pool.name],
            uid_candidates=candidates,
        )
        return functions.parse_reserve(await functions.aexecute(self.redis, call))

    def _granted(
        self, pool: PoolConfig, wants: Sequence[Want], reserved: functions.Reserved, now_ms: int
    ) -> dict[tuple[str, Slot], list[Lease]]:
        """The leases granted per channel (their acquires are started by the caller); every channel asked about
        is weighed again with what Redis said."""
        model = self.model.pools[pool.name]
        if reserved.status in ("HELD", "CAP"):
            # Held after failures, or the pool's acquires in flight (all replicas) at its cap: ask again after a
            # moment, or as soon as one of this replica's acquires for it ends.
            model.blocked_until = now_ms + LATER_MS
        out: dict[tuple[str, Slot], list[Lease]] = {}
        for want, granted in zip(wants, reserved.slots, strict=False):
            channel = self.model.channel(pool.name, want.slot)
            channel.live = granted.live
            channel.pending += len(granted.leases)
            out[(pool.name, want.slot)] = list(granted.leases)
            short = self.model.needs(pool.name, want.slot) > 0
            if len(granted.leases) < want.want and reserved.status == "OK" and short:
                # Another replica leases for it, or its announcement lacks no more: ask again later.
                self.model.later_at(pool.name, want.slot, now_ms + LATER_MS)
            else:
                self.model.evaluate(pool.name, want.slot)
        for want in wants[len(reserved.slots) :]:  # HELD: nothing was said of them
            self.model.evaluate(pool.name, want.slot)
        return out

    def _spawn(self, pool: PoolConfig, slot: Slot, lease: Lease) -> None:
        self.leases[lease.token] = self.keys[pool.name]
        task = asyncio.create_task(self._acquire(pool, slot, lease), name=f"acquire:{pool.name}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- one acquire ---------------------------------------------------------------------------------------

    async def _acquire(self, pool: PoolConfig, slot: Slot, lease: Lease) -> None:
        keys = self.keys[pool.name]
        cname = pool.expand_cname() if slot is None else slot
        uid = lease.uid or str(pool.uid)
        granted_at = [0.0]

        async def again(held: sending.Held) -> float:
            return await self._take(pool)

        async def take() -> None:
            at = await self._take(pool)
            granted_at[0] = self.clock.monotonic()
            sending.hold(sending.Held(at, self.budget.fresh, again))

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
            self.proven.add(pool.name)
            self.failing.discard(pool.name)  # the store resets the count in Redis; the next look confirms it
            self.latency += LATENCY_WEIGHT * (self.clock.monotonic() - granted_at[0] - self.latency)
            entry = got.entry(pool, cname, uid, self.clock.server_ms(got.sent_at))
            if await self._store(pool, keys, entry, lease, slot) is AddResult.ADDED:
                ahead = RETIRE_AHEAD_MS * pool.announced + self.stale_ms[pool.name]
                self.model.stored(pool.name, slot, entry.expires_at_ms, due_ahead_ms=ahead)
        except RedisRefused as exc:
            await self.damage.mark(pool.name, exc)  # the lease lapses by itself
        except (PoolUnavailable, redis.RedisError) as exc:
            # The lease lapses by itself; an acquired ID that could not be stored is lost, never half-written.
            log.warning("refill.redis_unavailable", pool=pool.name, error=str(exc))
        except asyncio.CancelledError:
            # Abandoned at shutdown: give the lease back at once so other replicas need not wait for it to lapse.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(functions.aexecute(self.redis, functions.release_call(keys, lease)), 0.5)
            raise
        finally:
            sending.hold(None)
            self.leases.pop(lease.token, None)
            self.tasks.discard(asyncio.current_task())
            channel = self.model.channel(pool.name, slot)
            channel.pending = max(0, channel.pending - 1)
            self.model.pools[pool.name].blocked_until = 0  # one of its leases is free: its cap may allow another
            self.model.evaluate(pool.name, slot)
            self.wake.set()

    async def _store(
        self, pool: PoolConfig, keys: PoolKeys, entry: Entry, lease: Lease, cname: str | None
    ) -> AddResult:
        if pool.name in self.damage.apart:
            # The pool turned out to be another config's while the acquire ran: the ID is not this pool's to store.
            await functions.aexecute(self.redis, functions.release_call(keys, lease))
            result = AddResult.CONFLICT
            log.info("refill.not_stored", pool=pool.name, cname=entry.cname, result=result.value)
            return result
        call = functions.add_call(
            keys,
            entry,
            queue_cname=cname,
            lease=lease.token,
            uid=lease.uid,
            acquired=True,
            identity=identity_of(pool),  # the config it was acquired under: Redis refuses it if not the owner's
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
        event = "refill.stored" if result in (AddResult.ADDED, AddResult.EXISTS) else "refill.not_stored"
        log.info(
            event, pool=pool.name, cname=entry.cname, uid=entry.uid, result=result.value, request_id=entry.request_id
        )
        return result

    async def _take(self, pool: PoolConfig) -> float:
        """A grant for one of the pool's requests; returns when it was handed out (the budget's clock)."""
        started = self.clock.monotonic()
        at = await self.budget.take()
        self.metrics.budget_wait.labels(pool.name).observe(self.clock.monotonic() - started)
        return at

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
        self.failing.add(pool.name)
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
        deadline = self.clock.now_ms() + self.lease_ms
        with functions.reaching(self.redis):
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
        self.wake.set()
        if not self.tasks:
            return 0
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        return len(pending)
