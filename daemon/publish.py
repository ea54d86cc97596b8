"""Publishing each pool's configuration in its `meta` hash, so that pops can tell an unknown pool or channel, and
releasing the publications when a replica leaves.

One object, used by the daemon's ticker (every `Timing.publish`), by the refill (a Redis that restarted empty
lost the metadata: it is put back before pops meet UnknownPool), by a reload and at shutdown. It also decides
which pools this replica keeps apart from (`PoolDamage.apart`): those whose live owner publishes another config.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, MutableMapping, Sequence

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


def identity_of(pool: PoolConfig) -> str:
    """The identity an entry acquired under this pool config carries into `ridpool_add` (see PoolMeta.identity)."""
    return meta_of(pool).identity()


class Publisher:
    """Publishes every pool; a pool whose publication another live replica's different config holds is kept
    `apart` (in `damage`): this replica neither leases nor stores for it, and says so in Redis (state `conflict`
    for `status` and `stats()`), until the configs agree or the owner stops. A pool is apart, too, until its first
    publication: a replica never acquires for a pool before it knows it agrees with the owner."""

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
        self.keys: dict[str, keyspace.PoolKeys] = {}
        self.metas: dict[str, PoolMeta] = {}
        # Computed once per config (over every channel of a pool), again only for the pools a reload changes.
        self.fingerprints: dict[str, str] = {}
        self.conflicts: dict[str, str] = {}  # pool -> why this replica keeps its hands off it
        self.lock = asyncio.Lock()  # a publication and a reload never interleave
        self.unpublished: set[str] = set()  # pools this replica has not published yet (the refill waits for it)
        # Told when a publication wrote the metadata anew (a Redis that lost it, a changed config) or a conflict
        # ended: the refill then writes its target fields again, and looks at every channel again.
        self.listeners: list[Callable[[], None]] = []
        self._adopt(config)

    def _adopt(self, config: Config) -> list[str]:
        """Take `config` as the one to publish; returns the pools it no longer has. New pools are apart until
        published (a changed one stays in use: its acquires in flight are stored unless its identity changed, which
        ridpool_add refuses, and a conflict found publishing it sets it apart)."""
        self.config = config
        metas = {p.name: meta_of(p) for p in config.pools}
        fingerprints = {
            name: self.fingerprints[name] if self.metas.get(name) == meta else meta.fingerprint()
            for name, meta in metas.items()
        }
        fresh = [name for name in metas if name not in self.metas]
        self.damage.apart.update(fresh)
        self.unpublished.update(fresh)
        gone = [name for name in self.metas if name not in metas]
        self.keys.update({name: keyspace.pool_keys(config.redis.key_prefix, name) for name in metas})
        self.metas, self.fingerprints = metas, fingerprints
        return gone

    async def publish(self) -> None:
        """Publish every pool (a pool whose meta is refused is marked damaged; the others are still published)."""
        async with self.lock:
            await self._publish()

    async def _publish(self) -> None:
        rewritten = False
        for pool in self.config.pools:
            keys = self.keys[pool.name]
            self.unpublished.discard(pool.name)
            try:
                published = await apublish(
                    self.redis,
                    keys,
                    self.metas[pool.name],
                    owner=self.replica_id,
                    live_ms=self.live_ms,
                    fingerprint=self.fingerprints[pool.name],
                )
                if published.ok:
                    rewritten = await self._agreed(pool.name) or rewritten
                    rewritten = rewritten or published.outcome == "PUBLISHED"
                else:
                    await self._conflict(pool.name, published.owner)
            except RedisRefused as exc:
                await self.damage.mark(pool.name, exc)
        if rewritten:
            for listener in self.listeners:
                listener()

    async def _agreed(self, pool: str) -> bool:
        """The pool's publication is this config's: take the pool up (again). Returns whether a conflict ended."""
        self.damage.apart.discard(pool)
        self.warnings.pop(f"owner:{pool}", None)
        if self.conflicts.pop(pool, None) is None:
            return False
        await functions.aexecute(
            self.redis, functions.conflict_call(self.keys[pool], replica=self.replica_id, live_ms=0)
        )
        log.info("pool.owner_agreed", pool=pool)
        return True

    async def _conflict(self, pool: str, owner: str) -> None:
        """Another live replica's different config stands: keep apart from the pool, and say so in Redis."""
        self.damage.apart.add(pool)
        differs = await self._differences(pool)
        message = (
            f"pool {pool!r}: replica {owner} publishes a different configuration for this name (differs in: "
            f"{', '.join(differs) or 'channels'}); replica {self.replica_id} neither overwrites it nor refills "
            "the pool (make the configs agree, or give the pool another name)"
        )
        call = functions.conflict_call(self.keys[pool], replica=self.replica_id, live_ms=self.live_ms, message=message)
        await functions.aexecute(self.redis, call)
        self.warnings[f"owner:{pool}"] = message
        if self.conflicts.get(pool) != message:
            log.error("pool.owner_conflict", pool=pool, owner=owner, differs=differs, error=message)
        self.conflicts[pool] = message

    async def _differences(self, pool: str) -> list[str]:
        """The settings in which the published config differs from this replica's (identity left out: it is
        derived from the others)."""
        mine = {k: v for k, v in self.metas[pool].fields().items() if k != "identity"}
        with functions.reaching(self.redis):
            held = await self.redis.hmget(self.keys[pool].meta, list(mine))
        return [k for k, v in zip(mine, held, strict=True) if v is None or functions.text(v) != mine[k]]

    async def reconfigure(self, config: Config) -> list[str]:
        """A reload: publish `config` (new and changed pools at once), and release the publications of the pools
        it dropped (a replica that still has one takes it over at once). Returns the pools dropped."""
        async with self.lock:
            gone = self._adopt(config)
            await self._release(gone)
            for pool in gone:
                self.damage.apart.discard(pool)
                self.warnings.pop(f"owner:{pool}", None)
            await self._publish()
        return gone

    async def ensure(self) -> bool:
        """Publish if a pool was never published by this replica (the refill's first round must not wait for the
        publish job to lease), or again if any pool's metadata is missing (a Redis that restarted empty, a
        FLUSHALL); returns whether it did."""
        if self.unpublished:
            await self.publish()
            return True
        with functions.reaching(self.redis):
            async with self.redis.pipeline(transaction=False) as pipe:
                for pool in self.config.pools:
                    pipe.exists(self.keys[pool.name].meta)
                present = await pipe.execute()
        if all(present):
            return False
        await self.publish()
        return True

    async def _release(self, pools: Sequence[str]) -> None:
        """These pools' publications stop counting as live, and this replica's conflict records go."""
        calls = [functions.release_publication_call(self.keys[p], owner=self.replica_id) for p in pools]
        calls += [
            functions.conflict_call(self.keys[p], replica=self.replica_id, live_ms=0)
            for p in pools
            if self.conflicts.pop(p, None) is not None
        ]
        with contextlib.suppress(redis.RedisError, RidpoolError, TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(functions.aexecute(self.redis, c) for c in calls)), 1.0)

    async def release(self) -> None:
        """This replica leaving: its publications stop counting as live, so a successor with a changed config
        takes the pools over at once; its conflict records go with it."""
        await self._release([p.name for p in self.config.pools])
