"""The daemon: wires config, Redis, the Agora client, the budget and the refiller, and runs them.

The refill runs as one continuous loop (a round, then a wait for an acquire to end, a tick, or the next
warm-up instant), so the budget, not a round per tick, sets the rate. The periodic jobs (heartbeat, metadata,
demand history, observation) run on a ticker (`ticker.every`, on the monotonic clock: wall-clock steps do not
move it); every replica is the same and all
coordination happens in Redis, so replicas can be added or killed at any time. Redis outages slow the daemon
down (jobs skip with a growing backoff) and never stop it; when Redis comes back, empty or not, the function
library is loaded again on first use and the pools' metadata republished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio
import structlog
from ridpool import functions
from ridpool import keys as keyspace
from ridpool.aio import AsyncPoolClient
from ridpool.daemon import ticker
from ridpool.daemon.agora import AcquireClient
from ridpool.daemon.announcements import Announcements
from ridpool.daemon.backoff import doubling
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, Credentials
from ridpool.daemon.demand import LearnedSource
from ridpool.daemon.limiter import Budget
from ridpool.daemon.metrics import Metrics, MetricsServer, Snapshot, pool_target
from ridpool.daemon.refill import Refiller, queue_cname
from ridpool.daemon.warmups import WarmupSource
from ridpool.errors import EvictionRisk, PoolUnavailable, RedisRefused, RidpoolError
from ridpool.meta import PoolMeta, apublish
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
    lease: float = 15.0  # how long a lease holds unless renewed (every heartbeat): a dead replica's lapse after it
    observe: float = 5.0  # between two looks at every pool's state, for /metrics and the `pool.summary` events
    sample: float = 15.0  # between attempts to write a step of demand history (one replica writes each step)
    history_step: float = 60.0  # one step of demand history
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
    ) -> None:
        self.config = config
        self.timing = timing or Timing()
        self.replica_id = replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.prefix = config.redis.key_prefix
        self.redis = config.redis.target().aconnect(health_check_interval=30)
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(config.agora.timeout, connect=min(5.0, config.agora.timeout)),
            limits=httpx.Limits(max_connections=config.agora.max_in_flight * 2, keepalive_expiry=30),
        )
        self.clock = ServerClock()
        self.metrics = Metrics()
        self.budget = Budget(
            self.redis,
            keyspace.account_keys(self.prefix, config.agora.account),
            config.agora.rate_limit,
            jitter=config.agora.jitter,
        )
        pool_keys = {p.name: keyspace.pool_keys(self.prefix, p.name) for p in config.pools}
        self.step_ms = round(self.timing.history_step * 1000)
        self.warmups = WarmupSource(
            self.redis, config.pools, pool_keys, shift_ms=round(self.timing.warmup_shift * 1000)
        )
        self.refiller = Refiller(
            self.redis,
            config,
            AcquireClient(self.http, config.agora.base_url, credentials, backoff_scale=self.timing.backoff_scale),
            self.budget,
            self.clock,
            replica_id=self.replica_id,
            lease_seconds=self.timing.lease,
            metrics=self.metrics,
            sources=[
                self.warmups,
                LearnedSource(self.redis, config.pools, pool_keys, step_ms=self.step_ms),
                Announcements(self.redis, config),
            ],
            next_instant=self.warmups.next_instant,
        )
        self.started_at = time.time()
        self.redis_down_since: float | None = None
        self.redis_retry_at = 0.0
        self.redis_failures = 0
        self.last_ok: float | None = None  # monotonic time a job last reached Redis
        self.running = False
        self.next_summary = 0.0
        self.warnings: dict[str, str] = {}  # what this replica wants every `ridpool status` to show, by topic

    # -- jobs ----------------------------------------------------------------------------------------------

    async def _guarded(self, name: str, job: Any) -> None:
        """Run one job; Redis trouble pauses the jobs with backoff, anything else is logged, never fatal.

        Shutdown cancels a job still running (a refill round waiting for the budget): the cancellation goes
        through, ending its ticker."""
        if self.redis_down_since is not None and time.monotonic() < self.redis_retry_at:
            return
        try:
            await job()
            self.last_ok = time.monotonic()
        except PoolUnavailable as exc:
            self._redis_failed(exc)
            return
        except Exception as exc:
            log.error("daemon.job_failed", job=name, error=f"{type(exc).__name__}: {exc}")
            return
        if self.redis_down_since is not None:
            log.info("redis.recovered", down_seconds=round(time.monotonic() - self.redis_down_since, 1))
            self.redis_down_since, self.redis_failures = None, 0
            await self._guarded("publish", self.publish)  # an empty Redis after a restart lost the metadata

    def _redis_failed(self, exc: PoolUnavailable) -> None:
        self.redis_failures += 1
        self.metrics.snapshot = replace(self.metrics.snapshot, reached=False)
        pause = doubling(self.redis_failures, 0.25, self.timing.redis_backoff_cap)
        self.redis_retry_at = time.monotonic() + pause
        if self.redis_down_since is None:
            self.redis_down_since = time.monotonic()
            log.error("redis.unavailable", error=str(exc), retry_in=pause)

    async def refill(self) -> None:
        # A Redis that restarted empty lost the pools' metadata: put it back before pops meet UnknownPool.
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for pool in self.config.pools:
                    pipe.exists(keyspace.pool_keys(self.prefix, pool.name).meta)
                present = await pipe.execute()
        if not all(present):
            await self.publish()
        await self.refiller.round()

    def health(self) -> tuple[bool, str]:
        """What /healthz answers: ok while the daemon runs and its jobs reach Redis; else why not, in one line."""
        if not self.running:
            return False, "not running (starting or stopping)"
        if self.redis_down_since is not None:
            return False, f"Redis unreachable for {time.monotonic() - self.redis_down_since:.0f} s"
        if self.last_ok is None:
            return False, "starting: Redis not reached yet"
        silent = time.monotonic() - self.last_ok
        if silent > 3 * max(self.timing.heartbeat, self.timing.tick):
            return False, f"no job has reached Redis for {silent:.0f} s"
        return True, "ok"

    async def observe(self) -> None:
        """Read every pool's state for /metrics, and log each pool's summary when one is due."""
        client = AsyncPoolClient(self.redis, prefix=self.prefix)
        try:
            pools = [await client.stats(pool.name) for pool in self.config.pools]
        except PoolUnavailable:
            self.metrics.snapshot = replace(self.metrics.snapshot, reached=False)
            raise
        self.metrics.snapshot = Snapshot(pools, reached=True)
        interval = self.config.logs.summary_interval
        if interval and time.monotonic() >= self.next_summary:
            self.next_summary = time.monotonic() + interval
            for stats in pools:
                if stats.known:  # not yet published (the first round after a start): nothing to sum up
                    log.info("pool.summary", **summary(stats))

    async def sample(self) -> None:
        """One step of every pool's demand history (the first replica in a step writes it)."""
        with functions.reaching(self.redis):
            for pool in self.config.pools:
                keys = keyspace.pool_keys(self.prefix, pool.name)
                queues = [queue_cname(pool, c) for c in pool.slots]
                call = functions.sample_call(keys, queues, step_ms=self.step_ms, retention_ms=HISTORY_RETENTION_MS)
                await functions.aexecute(self.redis, call)

    async def refill_loop(self) -> None:
        """Rounds back to back: each after an acquire ends, a tick, or just before a warm-up instant."""
        while not self.refiller.stopping:
            await self._guarded("refill", self.refill)
            wait = self.timing.tick
            wake = self.warmups.wake_ms(self.clock.server_ms(time.monotonic()))
            if wake is not None:
                wait = min(wait, (wake - self.clock.server_ms(time.monotonic())) / 1000)
            await self.refiller.idle(wait)

    async def baseline_loop(self, stop: asyncio.Event) -> None:
        """Take each warm-up's pops baseline at its instant, on a loop of its own: a refill round busy leasing
        across the instant would take it late, and pops made meanwhile would be acquired again."""
        while not stop.is_set():
            now = self.clock.server_ms(time.monotonic())
            wake = self.warmups.wake_ms(now)
            wait = self.timing.tick if wake is None else min(self.timing.tick, max(0.0, (wake - now) / 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            await self._guarded("baseline", lambda: self.warmups.take_baselines(self.clock.server_ms(time.monotonic())))

    async def publish(self) -> None:
        self.refiller.published.clear()  # the target fields are written again with the next round
        await self.clock.sync(self.redis)
        now = self.clock.server_ms(time.monotonic())
        # Another replica's publication counts as live for three of its publish intervals.
        live_ms = round(self.timing.publish * 3 * 1000)
        for pool in self.config.pools:
            meta = PoolMeta(
                pool.name,
                pool.appid,
                None if pool.is_template else pool.slots,
                pool.size,
                pool.max_age,
                now,
                announced=pool.announced,
                scene=pool.scene,
                grace=pool.announce_grace,
            )
            keys = keyspace.pool_keys(self.prefix, pool.name)
            try:
                published = await apublish(self.redis, keys, meta, owner=self.replica_id, live_ms=live_ms)
            except RedisRefused as exc:
                await self.refiller.mark_damaged(pool.name, exc)  # the other pools are still published
                continue
            topic = f"owner:{pool.name}"
            if published.ok:
                self.warnings.pop(topic, None)
                continue
            message = (
                f"pool {pool.name!r}: replica {published.owner} publishes a different configuration for this name; "
                "this replica does not overwrite it (give the pool another name, or the same config everywhere)"
            )
            self.warnings[topic] = message
            log.error("pool.owner_conflict", pool=pool.name, owner=published.owner, error=message)

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
        with functions.reaching(self.redis):
            await self.refiller.renew()
        now = self.clock.server_ms(time.monotonic())
        ttl_ms = round(self.timing.heartbeat * 3 * 1000)
        info = {
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "version": installed(),
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(timespec="seconds"),
            "pools": ",".join(p.name for p in self.config.pools),
            "in_flight": str(len(self.refiller.tasks)),
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
                self.config.metrics.address, self.config.metrics.port, self.metrics.registry, self.health
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
            ("publish", self.publish, self.timing.publish),
            ("heartbeat", self.heartbeat, self.timing.heartbeat),
            ("sample", self.sample, self.timing.sample),
        ]
        if self.config.metrics is not None or self.config.logs.summary_interval:
            jobs.append(("observe", self.observe, self.timing.observe))
        tickers = [
            asyncio.create_task(ticker.every(every, functools.partial(self._guarded, name, job), stop=stop), name=name)
            for name, job, every in jobs
        ]
        self.running = True
        tickers.append(asyncio.create_task(self.refill_loop(), name="refill"))
        if self.warmups.pools:
            tickers.append(asyncio.create_task(self.baseline_loop(stop), name="baseline"))
        try:
            await stop.wait()
        finally:
            self.running = False
            log.info("daemon.stopping", replica=self.replica_id, in_flight=len(self.refiller.tasks))
            self.refiller.stopping = True  # a round still running leases nothing more
            for task in tickers:
                task.cancel()
            # Bounded: a job that swallowed its cancellation still ends at the next look at `stop`.
            await asyncio.wait(tickers, timeout=self.timing.grace)
            abandoned = await self.refiller.stop(self.timing.grace)
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
            releases = [
                functions.aexecute(
                    self.redis,
                    functions.release_publication_call(keyspace.pool_keys(self.prefix, p.name), owner=self.replica_id),
                )
                for p in self.config.pools
            ]
            await asyncio.wait_for(asyncio.gather(*releases), 1.0)
        except (redis.RedisError, RidpoolError, TimeoutError):
            pass


def summary(stats: PoolStats) -> dict[str, object]:
    """The fields of one `pool.summary` event: fill, work in progress, waste."""
    return {
        "pool": stats.pool,
        "ready": stats.size,
        "target": pool_target(stats),
        "in_flight": stats.in_flight,
        "state": stats.state,
        "pops": stats.counters["pops"],
        "misses": stats.counters["misses"],
        "expired_unused": stats.counters["expired"],  # the waste: IDs acquired and never popped
        "acquires": stats.counters["acquires"],
        "errors": stats.counters["errors"],
    }


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
