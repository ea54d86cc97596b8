"""Reloading the config file on SIGHUP, without a restart: pools added, removed and resized, warm-ups, learned
demand, announcements settings, `max_age`, the Agora hosts and the account's rate changed, while the entries
stored and the acquires in flight stay.

A reload reads and validates the whole file as `ridpool run` does; an invalid file, or one that changes what only
a restart can change (`RESTART_ONLY`: the Redis connection and key prefix, the account's name, the HTTP client's
timeout and connection pool, the metrics endpoint, the log summaries), is refused with every reason logged
(`config.reload_refused`), and the config in force stays. Otherwise `config.reloaded` says what changed, and:

- the publisher publishes the new config at once and releases the publications of the pools dropped (a replica
  that still has one takes it over); a new pool is left alone until published, as at start;
- the budget takes the new rate, jitter and refill floor, the Agora client its hosts;
- the refill takes the new pools, targets and demand sources between two rounds (never in the middle of one), so
  the next round (within a tick) plans with them. Entries stored stay in Redis; an acquire in flight is stored
  when it returns, for a dropped pool too (its lease was taken under the config in force then), unless the
  pool's identity (appid, cname or template, uid, clientRequest) changed: Redis refuses it then, and drops the
  queues filled under the old identity (see `ridpool_add`).

A dropped pool stays published (its entries are popped until they expire) and no replica with this config
refills it.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from ridpool.daemon.config import AgoraSettings, Config, PoolConfig, load_config
from ridpool.daemon.refill import Refiller, config_slots
from ridpool.daemon.sources import DemandSource, SourceContext
from ridpool.errors import ConfigError, PoolUnavailable
from ridpool.keys import pool_keys

if TYPE_CHECKING:
    from ridpool.daemon.service import Daemon

log = structlog.get_logger("ridpool.daemon")

# Settings a reload refuses to change (the process holds what they made: connections, keys, threads, jobs).
RESTART_ONLY = (
    "redis",
    "metrics",
    "logs",
    "agora.account",
    "agora.timeout",
    "agora.max_in_flight",
)


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changes: pools added and removed, the fields of each pool changed, the [agora] fields."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    agora: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.agora)

    def fields(self) -> dict[str, object]:
        """The `config.reloaded` event's fields."""
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {pool: list(names) for pool, names in self.changed.items()},
            "agora": list(self.agora),
        }


def _setting(config: Config, path: str) -> object:
    value: object = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def refusals(old: Config, new: Config) -> list[str]:
    """Why `new` cannot replace `old` without a restart: one reason per setting only a restart changes."""
    return [
        f"{path}: changes only with a restart (a reload keeps the running value)"
        for path in RESTART_ONLY
        if _setting(old, path) != _setting(new, path)
    ]


def changes(old: Config, new: Config) -> Changes:
    """What differs between two configs, by pool and by field."""
    before, after = {p.name: p for p in old.pools}, {p.name: p for p in new.pools}
    changed = {
        name: tuple(f for f in PoolConfig.model_fields if getattr(before[name], f) != getattr(pool, f))
        for name, pool in after.items()
        if name in before and before[name] != pool
    }
    return Changes(
        added=tuple(n for n in after if n not in before),
        removed=tuple(n for n in before if n not in after),
        changed=changed,
        agora=tuple(f for f in AgoraSettings.model_fields if getattr(old.agora, f) != getattr(new.agora, f)),
    )


def refit(refiller: Refiller, config: Config, sources: Sequence[DemandSource], removed: Sequence[str]) -> None:
    """The refill's part of a reload, run between two rounds: pools, targets' inputs, sources, per-replica cap."""
    refiller.config = config
    refiller.pools = {p.name: p for p in config.pools}
    refiller.max_age_ms = {p.name: p.max_age_ms for p in config.pools}
    refiller.stale_ms = dict.fromkeys(refiller.pools, 0)  # the full life until the freshness job decides again
    refiller.channels = config.channels
    refiller.keys.update({p.name: pool_keys(config.redis.key_prefix, p.name) for p in config.pools})
    refiller.sources = list(sources)
    refiller.max_in_flight = config.agora.in_flight
    for pool in config.pools:
        refiller.model.refit(pool.name, config_slots(pool))
    for name in removed:
        refiller.model.retire(name)
        refiller.published.pop(name, None)
        refiller.logged.pop(name, None)
    refiller.demands = [d for d in refiller.demands if d.pool in refiller.pools]
    refiller.phases = {k: end for k, end in refiller.phases.items() if k[0] in refiller.pools}


class Reloader:
    """Reloads of one daemon from its config file, one at a time (a second SIGHUP waits for the first)."""

    def __init__(self, daemon: Daemon, path: str | os.PathLike[str]) -> None:
        self.daemon = daemon
        self.path = Path(path)
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[bool]] = set()

    def request(self) -> None:
        """The SIGHUP handler: reload in a task of its own (the loop's signal handlers must not block)."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reload(self) -> bool:
        """Read the file again and apply it; returns whether the new config is in force (False: refused)."""
        async with self.lock:
            if not self.daemon.health.running:
                log.error("config.reload_refused", path=str(self.path), reasons=["the daemon is starting or stopping"])
                return False
            old = self.daemon.config
            try:
                new = load_config(self.path)
            except ConfigError as exc:
                log.error("config.reload_refused", path=str(self.path), reasons=exc.problems)
                return False
            reasons = refusals(old, new)
            if reasons:
                log.error("config.reload_refused", path=str(self.path), reasons=reasons)
                return False
            diff = changes(old, new)
            if diff:
                await self.apply(new, diff)
            log.info("config.reloaded", path=str(self.path), **diff.fields())
            for warning in new.warnings:
                log.warning("config.warning", warning=warning)
            return True

    async def apply(self, config: Config, diff: Changes) -> None:
        daemon = self.daemon
        daemon.config = config
        daemon.keys.update({p.name: pool_keys(config.redis.key_prefix, p.name) for p in config.pools})
        agora = config.agora
        daemon.budget.retune(agora.rate_limit, jitter=agora.jitter, refill_max_wait=agora.refill_max_wait)
        daemon.refiller.acquirer.hosts = tuple(h.rstrip("/") for h in agora.base_url)
        context = SourceContext(daemon.redis, config, daemon.timing)
        sources = [make(context) for make in daemon.source_factories]
        try:
            # Published before the refill plans with it: a new pool is left alone until then.
            await daemon.publisher.reconfigure(config)
        except PoolUnavailable as exc:
            # The publish job (and the refill's check for missing metadata) publishes it when Redis is back.
            log.warning("config.reload_unpublished", error=str(exc))
        daemon.refiller.between_rounds.append(functools.partial(refit, daemon.refiller, config, sources, diff.removed))
        daemon.refiller.wake.set()
