"""The daemon: wires config, Redis, the Agora client, the budget and the refiller, and runs them.

The refill runs as one continuous loop of its own (`Refiller.run`: a round, then a wait for an acquire to end, a
tick, or a demand source's instant), so the budget, not a round per tick, sets the rate. The periodic jobs
(heartbeat, metadata, demand history, observation) run on a ticker (`ticker.every`, on the monotonic clock:
wall-clock steps do not move it); every replica is the same and all coordination happens in Redis, so replicas
can be added or killed at any time. Redis outages slow the daemon
down (jobs skip with a growing backoff) and never stop it; when Redis comes back, empty or not, the function
library is loaded again on first use and the pools' metadata republished.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio
import structlog
from ridpool import functions, stats
from ridpool import keys as keyspace
from ridpool.aio import AsyncPoolClient
from ridpool.daemon import sending, ticker, transport
from ridpool.daemon.agora import AcquireClient
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, Credentials
from ridpool.daemon.freshen import Freshener
from ridpool.daemon.health import PoolDamage, RedisHealth
from ridpool.daemon.limiter import Budget
from ridpool.daemon.metrics import Metrics, MetricsServer, Snapshot
from ridpool.daemon.publish import Publisher, meta_of
from ridpool.daemon.refill import Refiller
from ridpool.daemon.sources import STANDARD, SourceContext, SourceFactory
from ridpool.errors import EvictionRisk, PoolUnavailable, RidpoolError
from ridpool.stats import PoolStats
from ridpool.version import installed

log = structlog.get_logger("ridpool.daemon")
# Demand history is kept five weeks: enough to see a weekly schedule recur, and counters only (no IDs).
HISTORY_RETENTION_MS = 35 * 86_400_000


@dataclass(frozen=True, slots=True)
class Timing:
    """Every interval the daemon keeps; tests shrink them instead of sleeping."""

    tick: float = 1.0  # the longest wait between refill rounds (a round also follows every finished acquire)
    heartbeat: float = 2.0  # a replica is shown live for 3 heartbeats after its last
    publish: float = 10.0  # republishing pool metadata (restores it after Redis lost it)
    grace: float = 3.0  # at shutdown, how long in-flight acquires may still finish
    backoff_scale: float = 1.0  # scales Agora's 1 s / 3 s / 6 s retry backoff
    redis_backoff_cap: float = 8.0  # longest pause between attempts to reach a Redis that is down
    # How long a lease holds unless renewed (every heartbeat): a replica that stops heart-beating (killed, cut off
    # from Redis) has its leases stop counting within a few heartbeats, and its peers refill what it held.
    lease: float = 5.0
    observe: float = 3600.0  # the longest interval between two looks at every pool's state (tests shrink it)
    sample: float = 15.0  # between attempts to write a step of demand history (one replica writes each step)
    history_step: float = 60.0  # one step of demand history
    freshen: float = 15.0  # between looks at each auto_max_age pool's decision (one replica decides each minute)
    warmup_shift: float = 0.0  # seconds added to server time to compute warm-up instants (tests move them near)


class Daemon:
    def __init__(
        self,
        config: Config,
        credentials: Credentials,
        *,
        timing: Timing | None = None,
        replica_id: str | None = None,
        http: httpx.AsyncClient | None = None,
        clock: ServerClock | None = None,
        extra_sources: Sequence[SourceFactory] = (),
    ) -> None:
        """`extra_sources`: demand sources beyond the standard ones (standing sizes, warm-ups, learned demand,
        announcements), each built from the replica's Redis client, config and timing."""
        self.config = config
        self.timing = timing or Timing()
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.prefix = config.redis.key_prefix
        self.redis = config.redis.target().aconnect(health_check_interval=30)
        self.http = sending.guard(
            http
            or transport.client(
                config.agora.in_flight * 2,
                httpx.Timeout(config.agora.timeout, connect=min(5.0, config.agora.timeout)),
            )
        )
        self.clock = clock or ServerClock()
        self.metrics = Metrics()
        self.budget = Budget(
            self.redis,
            keyspace.account_keys(self.prefix, config.agora.account),
            config.agora.rate_limit,
            jitter=config.agora.jitter,
            refill_max_wait=config.agora.refill_max_wait,
        )
        self.health = RedisHealth(
            self.clock.monotonic,
            backoff_cap=self.timing.redis_backoff_cap,
            stale_after=3 * max(self.timing.heartbeat, self.timing.tick),
        )
        self.health.on_down = self._unreached
        self.keys = {p.name: keyspace.pool_keys(self.prefix, p.name) for p in config.pools}
        self.damage = PoolDamage(self.redis, self.keys)
        self.warnings: dict[str, str] = {}  # what this replica wants every `ridpool status` to show, by topic
        self.publisher = Publisher(
            self.redis,
            config,
            self.damage,
            replica_id=self.replica_id,
            live_ms=round(self.timing.publish * 3 * 1000),  # another replica's counts as live for three intervals
            warnings=self.warnings,
        )
        self.health.on_recovered = self.publisher.publish  # an empty Redis after a restart lost the metadata
        context = SourceContext(self.redis, config, self.timing)
        self.source_factories = (*STANDARD, *extra_sources)  # built again from a reloaded config (daemon/reload.py)
        self.refiller = Refiller(
            self.redis,
            config,
            AcquireClient(self.http, config.agora.base_url, credentials, backoff_scale=self.timing.backoff_scale),
            self.budget,
            self.clock,
            sources=[make(context) for make in self.source_factories],
            health=self.health,
            damage=self.damage,
            publisher=self.publisher,
            replica_id=self.replica_id,
            lease_seconds=self.timing.lease,
            tick=self.timing.tick,
            renew_every=self.timing.heartbeat,
            metrics=self.metrics,
        )
        self.freshener = Freshener(
            self.redis, config, self.clock, fingerprints=self.publisher.fingerprints, apply=self.refiller.set_max_age
        )
        self.started_at = time.time()  # wall time, only to show when the replica started
        self.next_summary = 0.0
        self.step_ms = round(self.timing.history_step * 1000)

    # -- jobs ----------------------------------------------------------------------------------------------

    def _unreached(self) -> None:
        self.metrics.snapshot = replace(self.metrics.snapshot, reached=False)

    def health_status(self) -> tuple[bool, str]:
        """What /healthz answers (see RedisHealth.status), naming the pools this replica keeps apart from because
        another config owns them: still 200 (restarting cannot mend a config, and a rollout would stall)."""
        ok, why = self.health.status()
        conflicts = sorted(self.publisher.conflicts)
        return ok, why + (f"; conflict: pools {', '.join(conflicts)} (another replica owns them)" if conflicts else "")

    async def observe(self) -> None:
        """Read every pool's state for /metrics, and log each pool's summary when one is due."""
        client = AsyncPoolClient(self.redis, prefix=self.prefix)
        try:
            pools = [await client.stats(pool.name) for pool in self.config.pools]
        except PoolUnavailable:
            self._unreached()
            raise
        self.metrics.snapshot = Snapshot(pools, reached=True)
        interval = self.config.logs.summary_interval
        if interval and self.clock.monotonic() >= self.next_summary:
            self.next_summary = self.clock.monotonic() + interval
            for stats in pools:
                if stats.known:  # not yet published (the first round after a start): nothing to sum up
                    log.info("pool.summary", **summary(stats))

    async def sample(self) -> None:
        """One step of every pool's demand history (the first replica in a step writes it; the others, and this
        one until the next step, only look at which step was written last)."""
        await self.clock.sync(self.redis)
        step = self.clock.now_ms() // self.step_ms
        for pool in self.config.pools:
            keys = self.keys[pool.name]
            with functions.reaching(self.redis):
                last = await self.redis.hget(keys.history, "last")
            if last is not None and int(last) >= step:
                continue  # written: counting the pool's queues again would be for nothing
            live = await functions.arun(self.redis, stats.live(keys, meta_of(pool).mode))
            call = functions.sample_call(keys, step_ms=self.step_ms, retention_ms=HISTORY_RETENTION_MS, live=live)
            await functions.aexecute(self.redis, call)

    async def check_eviction(self) -> None:
        """Refuse (EvictionRisk) a Redis that may evict keys, unless [redis] allow_eviction; then warn instead."""
        with functions.reaching(self.redis):
            if self.config.redis.mode == "cluster":  # every primary, not just the one redis-py asks by default
                reply = await self.redis.execute_command("INFO", "memory", target_nodes="primaries")
            else:
                reply = await self.redis.info("memory")
        problem = eviction_problem(reply)
        if problem is None:
            self.warnings.pop("eviction", None)
            return
        if not self.config.redis.allow_eviction:
            self.warnings["eviction"] = problem
            raise EvictionRisk(problem)
        self.warnings["eviction"] = f"{problem} (allowed by [redis] allow_eviction = true)"
        log.warning("redis.eviction_allowed", warning=self.warnings["eviction"])

    async def heartbeat(self) -> None:
        await self.clock.sync(self.redis)
        try:
            await self.check_eviction()
        except EvictionRisk as exc:
            log.error("redis.eviction_risk", error=str(exc))  # checked again every heartbeat; status shows it
        now = self.clock.now_ms()
        ttl_ms = round(self.timing.heartbeat * 3 * 1000)
        info = {
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "version": installed(),
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds"),
            "pools": ",".join(p.name for p in self.config.pools),
            "in_flight": str(self.refiller.in_flight),
            "granted": str(self.budget.granted),
            "warnings": "\n".join(self.warnings.values()),
        }
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(keyspace.replicas(self.prefix), {self.replica_id: now})
                pipe.zremrangebyscore(keyspace.replicas(self.prefix), "-inf", now - 10 * ttl_ms)
                pipe.hset(keyspace.replica(self.prefix, self.replica_id), mapping=info)
                pipe.pexpire(keyspace.replica(self.prefix, self.replica_id), ttl_ms)
                await pipe.execute()

    # -- life cycle ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set; returns the number of acquires abandoned at shutdown.

        Raises EvictionRisk before anything runs when Redis may evict keys (and eviction is not allowed).
        """
        server = None
        if self.config.metrics is not None:
            # Started first: a port already taken fails the start in one line, before anything else runs (and
            # /healthz answers 503 "starting" meanwhile).
            server = MetricsServer(
                self.config.metrics.address, self.config.metrics.port, self.metrics.registry, self.health_status
            ).start()
        try:
            await self.check_eviction()
        except PoolUnavailable as exc:
            log.error("redis.unavailable", error=str(exc))  # checked again with every heartbeat
        except EvictionRisk:
            if server is not None:
                server.stop()
            await self.http.aclose()
            await self.redis.aclose()
            raise
        log.info(
            "daemon.started",
            replica=self.replica_id,
            pools=[p.name for p in self.config.pools],
            rate_limit=self.config.agora.rate_limit,
            hosts=list(self.config.agora.base_url),
        )
        for warning in self.config.warnings:
            log.warning("config.warning", warning=warning)
        jobs = [
            ("publish", self.publisher.publish, self.timing.publish),
            ("heartbeat", self.heartbeat, self.timing.heartbeat),
            ("sample", self.sample, self.timing.sample),
            ("freshen", self.freshener.run, self.timing.freshen),
        ]
        every = observe_interval(self.config, self.timing)
        if every is not None:
            jobs.append(("observe", self.observe, every))
        tickers = [
            asyncio.create_task(
                ticker.every(every, functools.partial(self.health.guarded, name, job), stop=stop), name=name
            )
            for name, job, every in jobs
        ]
        self.health.running = True
        refill = asyncio.create_task(self.refiller.run(stop), name="refill")
        try:
            await stop.wait()
        finally:
            self.health.running = False
            log.info("daemon.stopping", replica=self.replica_id, in_flight=self.refiller.in_flight)
            for task in tickers:
                task.cancel()
            abandoned = await self.refiller.stop(self.timing.grace)
            # Bounded: a job that swallowed its cancellation still ends at the next look at `stop`.
            await asyncio.wait([*tickers, refill], timeout=self.timing.grace)
            await self._leave()
            await self.http.aclose()
            await self.redis.aclose()
            if server is not None:
                server.stop()
            log.info("daemon.stopped", replica=self.replica_id, abandoned=abandoned)
        return abandoned

    async def _leave(self) -> None:
        """Take this replica off the live list at once rather than letting its heartbeat lapse, and release its
        pools' publications (a successor with a changed config takes them over at once)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keyspace.replicas(self.prefix), self.replica_id)
                pipe.delete(keyspace.replica(self.prefix, self.replica_id))
                await asyncio.wait_for(pipe.execute(), 1.0)
        except (redis.RedisError, RidpoolError, TimeoutError):
            return
        await self.publisher.release()


def observe_interval(config: Config, timing: Timing) -> float | None:
    """How often the pools' state is read: as often as its readers need it (/metrics at its `refresh`, the
    `pool.summary` events at `logs.summary_interval`); None: nobody reads it."""
    wanted = [config.metrics.refresh] if config.metrics is not None else []
    if config.logs.summary_interval:
        wanted.append(config.logs.summary_interval)
    return min(timing.observe, *wanted) if wanted else None


def summary(pool: PoolStats) -> dict[str, object]:
    """The fields of one `pool.summary` event: the pool's figures (pool/stats.py), as every view shows them."""
    return {"pool": pool.pool, **stats.figures(pool)}


def eviction_problem(info: Any) -> str | None:
    """Why a Redis (INFO memory; on a Cluster one reply per node) may evict ridpool's keys, or None."""
    replies = info.values() if isinstance(info, dict) and "maxmemory_policy" not in info else [info]
    for reply in replies:
        policy, limit = str(reply.get("maxmemory_policy", "noeviction")), int(reply.get("maxmemory", 0))
        if policy != "noeviction" and limit != 0:
            return (
                f"Redis maxmemory-policy is {policy} with maxmemory {limit}: it may evict the pools, their metadata "
                "and the shared budget (then 429s); set maxmemory-policy noeviction (or maxmemory 0), "
                "or [redis] allow_eviction = true to run anyway"
            )
    return None
