"""The daemon: wires config, Redis, the Agora client, the budget and the refiller, and runs them on a ticker.

The ticker (`ticker.every`, on the monotonic clock: wall-clock steps do not move it) runs the local jobs (refill
rounds, heartbeat, metadata); every replica is the same and all
coordination happens in Redis, so replicas can be added or killed at any time. Redis outages slow the daemon
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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio
import structlog
from ridpool import connect, functions
from ridpool import keys as keyspace
from ridpool.daemon import ticker
from ridpool.daemon.agora import AcquireClient
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config, Credentials
from ridpool.daemon.limiter import Budget
from ridpool.daemon.refill import Refiller
from ridpool.errors import EvictionRisk, PoolUnavailable, RedisRefused, RidpoolError
from ridpool.meta import PoolMeta, apublish

log = structlog.get_logger("ridpool.daemon")
VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class Timing:
    """Every interval the daemon keeps; tests shrink them instead of sleeping."""

    tick: float = 1.0  # between refill rounds
    heartbeat: float = 2.0  # a replica is shown live for 3 heartbeats after its last
    publish: float = 10.0  # republishing pool metadata (restores it after Redis lost it)
    grace: float = 3.0  # at shutdown, how long in-flight acquires may still finish
    backoff_scale: float = 1.0  # scales Agora's 1 s / 3 s / 6 s retry backoff
    redis_backoff_cap: float = 8.0  # longest pause between attempts to reach a Redis that is down
    lease: float = 15.0  # how long a lease holds unless renewed (every heartbeat): a dead replica's lapse after it


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
        self.redis = connect.aconnect(config.redis.url, **config.redis.client_kwargs(), health_check_interval=30)
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(config.agora.timeout, connect=min(5.0, config.agora.timeout)),
            limits=httpx.Limits(max_connections=config.agora.max_in_flight * 2, keepalive_expiry=30),
        )
        self.clock = ServerClock()
        self.budget = Budget(
            self.redis,
            keyspace.account_keys(self.prefix, config.agora.account),
            config.agora.rate_limit,
            jitter=config.agora.jitter,
        )
        self.refiller = Refiller(
            self.redis,
            config,
            AcquireClient(self.http, config.agora.base_url, credentials, backoff_scale=self.timing.backoff_scale),
            self.budget,
            self.clock,
            replica_id=self.replica_id,
            lease_seconds=self.timing.lease,
        )
        self.started_at = time.time()
        self.redis_down_since: float | None = None
        self.redis_retry_at = 0.0
        self.redis_failures = 0
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
        pause = min(self.timing.redis_backoff_cap, 0.25 * 2 ** (self.redis_failures - 1))
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

    async def publish(self) -> None:
        await self.clock.sync(self.redis)
        now = self.clock.server_ms(time.monotonic())
        # Another replica's publication counts as live for three of its publish intervals.
        live_ms = round(self.timing.publish * 3 * 1000)
        for pool in self.config.pools:
            meta = PoolMeta(
                pool.name, pool.appid, None if pool.is_template else pool.slots, pool.size, pool.max_age, now
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
            "version": VERSION,
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
        try:
            await self.check_eviction()
        except PoolUnavailable as exc:
            log.error("redis.unavailable", error=str(exc))  # checked again with every heartbeat
        except EvictionRisk:
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
        jobs = (
            ("publish", self.publish, self.timing.publish),
            ("heartbeat", self.heartbeat, self.timing.heartbeat),
            ("refill", self.refill, self.timing.tick),
        )
        tickers = [
            asyncio.create_task(ticker.every(every, functools.partial(self._guarded, name, job)), name=name)
            for name, job, every in jobs
        ]
        try:
            await stop.wait()
        finally:
            log.info("daemon.stopping", replica=self.replica_id, in_flight=len(self.refiller.tasks))
            self.refiller.stopping = True  # a round still running leases nothing more
            for task in tickers:
                task.cancel()
            await asyncio.gather(*tickers, return_exceptions=True)
            abandoned = await self.refiller.stop(self.timing.grace)
            await self._leave()
            await self.http.aclose()
            await self.redis.aclose()
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
