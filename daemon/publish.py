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
from ridpool.daemon.config import Config, PoolConfig
from ridpool.daemon.health import PoolDamage
from ridpool.errors import RedisRefused, RidpoolError
from ridpool.meta import PoolMeta, apublish

log = structlog.get_logger("ridpool.daemon")


def meta_of(pool: PoolConfig) -> PoolMeta:
    """What a replica publishes of a pool's configuration."""
    uid = pool.uid or ("-".join(str(u) for u in pool.uid_range) if pool.uid_range else "")
    return PoolMeta(
        pool.name,
        pool.appid,
        None if pool.is_template else pool.slots,
        pool.size,
        pool.max_age,
        announced=pool.announced,
        scene=pool.scene,
        grace=pool.announce_grace,
        label=pool.cname or "",
        uid=uid,
        client_request=pool.client_request(),
    )


class Publisher:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        config: Config,
        damage: PoolDamage,
        *,
        replica_id: str,
        live_ms: int,
        warnings: MutableMapping[str, str],
    ) -> None:
        self.redis = client
        self.config = config
        self.damage = damage
        self.replica_id = replica_id
        self.live_ms = live_ms  # another replica's publication counts as live this long
        self.warnings = warnings  # what this replica asks every `ridpool status` to show, by topic
        self.keys = {p.name: keyspace.pool_keys(config.redis.key_prefix, p.name) for p in config.pools}
        self.metas = {p.name: meta_of(p) for p in config.pools}
        # Computed once (over every channel of a pool): the config does not change while this replica runs.
        self.fingerprints = {name: meta.fingerprint() for name, meta in self.metas.items()}
        # Told when a publication wrote the metadata anew (a Redis that lost it, a changed config): the refill
        # then writes its target fields again too.
        self.listeners: list[Callable[[], None]] = []

    async def publish(self) -> None:
        """Publish every pool (a pool whose meta is refused is marked damaged; the others are still published)."""
        rewritten = False
        for pool in self.config.pools:
            try:
                published = await apublish(
                    self.redis,
                    self.keys[pool.name],
                    self.metas[pool.name],
                    owner=self.replica_id,
                    live_ms=self.live_ms,
                    fingerprint=self.fingerprints[pool.name],
                )
            except RedisRefused as exc:
                await self.damage.mark(pool.name, exc)
                continue
            rewritten = rewritten or published.outcome == "PUBLISHED"
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
        if rewritten:
            for listener in self.listeners:
                listener()

    async def ensure(self) -> bool:
        """Publish again if any pool's metadata is missing (a Redis that restarted empty, a FLUSHALL); returns
        whether it was."""
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys in self.keys.values():
                    pipe.exists(keys.meta)
                present = await pipe.execute()
        if all(present):
            return False
        await self.publish()
        return True

    async def release(self) -> None:
        """This replica leaving: its publications stop counting as live, so a successor with a changed config
        takes the pools over at once."""
        releases = [
            functions.aexecute(self.redis, functions.release_publication_call(keys, owner=self.replica_id))
            for keys in self.keys.values()
        ]
        with contextlib.suppress(redis.RedisError, RidpoolError, TimeoutError):
            await asyncio.wait_for(asyncio.gather(*releases), 1.0)
