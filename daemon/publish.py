"""Publishing each pool's configuration in its `meta` hash, so that pops can tell an unknown pool or channel, and
releasing the publications when a replica leaves.

One object, used by the daemon's ticker (every `Timing.publish`), by the refill (a Redis that restarted empty
lost the metadata: it is put back before pops meet UnknownPool) and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, MutableMapping

import redis.asyncio
import structlog
from ridpool import functions
from ridpool import keys as keyspace
from ridpool.daemon.clock import ServerClock
from ridpool.daemon.config import Config
from ridpool.daemon.health import PoolDamage
from ridpool.errors import RedisRefused, RidpoolError
from ridpool.meta import PoolMeta, apublish

log = structlog.get_logger("ridpool.daemon")


class Publisher:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        config: Config,
        clock: ServerClock,
        damage: PoolDamage,
        *,
        replica_id: str,
        live_ms: int,
        warnings: MutableMapping[str, str],
    ) -> None:
        self.redis = client
        self.config = config
        self.clock = clock
        self.damage = damage
        self.replica_id = replica_id
        self.live_ms = live_ms  # another replica's publication counts as live this long
        self.warnings = warnings  # what this replica asks every `ridpool status` to show, by topic
        self.keys = {p.name: keyspace.pool_keys(config.redis.key_prefix, p.name) for p in config.pools}
        self.listeners: list[Callable[[], None]] = []  # told after each publication (the refill republishes targets)

    async def publish(self) -> None:
        """Publish every pool (a pool whose meta is refused is marked damaged; the others are still published)."""
        await self.clock.sync(self.redis)
        now = self.clock.now_ms()
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
            try:
                published = await apublish(
                    self.redis, self.keys[pool.name], meta, owner=self.replica_id, live_ms=self.live_ms
                )
            except RedisRefused as exc:
                await self.damage.mark(pool.name, exc)
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
        for listener in self.listeners:
            listener()

    async def ensure(self) -> None:
        """Publish again if any pool's metadata is missing (a Redis that restarted empty, a FLUSHALL)."""
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in self.keys.values():
                    pipe.exists(keys.meta)
                present = await pipe.execute()
        if not all(present):
            await self.publish()

    async def release(self) -> None:
        """This replica leaving: its publications stop counting as live, so a successor with a changed config
        takes the pools over at once."""
        releases = [
            functions.aexecute(self.redis, functions.release_publication_call(keys, owner=self.replica_id))
            for keys in self.keys.values()
        ]
        with contextlib.suppress(redis.RedisError, RidpoolError, TimeoutError):
            await asyncio.wait_for(asyncio.gather(*releases), 1.0)
