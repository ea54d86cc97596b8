"""A pool's published metadata: what a daemon writes so that pops can tell an unknown pool or channel.

The meta hash has no TTL on purpose: it holds no ID, and it must outlive every daemon so that a starter popping
while no daemon runs gets PoolEmpty (the pool exists, it is just empty), not UnknownPool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis
import redis.asyncio
from ridpool import functions
from ridpool.functions import Published
from ridpool.keys import PoolKeys, registry


@dataclass(frozen=True, slots=True)
class PoolMeta:
    pool: str
    appid: str
    cnames: tuple[str, ...] | None  # None: a template pool, each entry labelled by the daemon
    size: int  # entries kept ready per channel
    max_age: float  # seconds an entry is offered after its acquire was sent
    published_at_ms: int = 0
    announced: bool = False  # channels come from announcements (`cnames` is then empty)
    scene: int = 0  # announce checks channel names against Agora's rules for it
    grace: float = 300.0  # seconds an announcement stays pending after its instant

    @property
    def mode(self) -> str:
        if self.announced:
            return "announced"
        return "template" if self.cnames is None else "named"

    def fields(self) -> dict[str, str]:
        fields = {
            "mode": self.mode,
            "appid": self.appid,
            "size": str(self.size),
            "max_age_ms": str(round(self.max_age * 1000)),
            "cnames": json.dumps(list(self.cnames or ())),
            "published_at_ms": str(self.published_at_ms),
            "scene": str(self.scene),
            "grace_ms": str(round(self.grace * 1000)),
        }
        # One field per channel so that the pop function checks a channel with one HEXISTS.
        fields.update({f"c:{name}": "1" for name in self.cnames or ()})
        return fields


def publish(client: redis.Redis, keys: PoolKeys, meta: PoolMeta, *, owner: str = "", live_ms: int = 0) -> Published:
    """Replace the pool's metadata in one step (a channel dropped from the config stops being served), unless
    another owner published a different configuration less than `live_ms` ago (then `ok` is False)."""
    call = functions.publish_call(keys, meta.fields(), owner=owner, live_ms=live_ms)
    published = functions.parse_publish(functions.execute(client, call))
    with functions.reaching(client):
        client.sadd(registry(keys.prefix), keys.pool)
    return published


async def apublish(
    client: redis.asyncio.Redis, keys: PoolKeys, meta: PoolMeta, *, owner: str = "", live_ms: int = 0
) -> Published:
    """The asyncio twin of `publish`."""
    call = functions.publish_call(keys, meta.fields(), owner=owner, live_ms=live_ms)
    published = functions.parse_publish(await functions.aexecute(client, call))
    with functions.reaching(client):
        await client.sadd(registry(keys.prefix), keys.pool)
    return published
