"""A pool's published metadata: what a daemon writes so that pops can tell an unknown pool or channel.

The meta hash has no TTL on purpose: it holds no ID, and it must outlive every daemon so that a starter popping
while no daemon runs gets PoolEmpty (the pool exists, it is just empty), not UnknownPool.

Publishing costs one small call when nothing changed (the fingerprint is the same) and, when something did, the
channels that changed in bounded chunks, new ones added before dropped ones go; the fingerprint is written last,
so a publisher that stops half way leaves the old one and the next publication finishes the job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
import redis.asyncio
from ridpool import functions
from ridpool.functions import CHUNK, Plan, Published
from ridpool.keys import PoolKeys, registry


@dataclass(frozen=True, slots=True)
class PoolMeta:
    pool: str
    appid: str
    cnames: tuple[str, ...] | None  # None: a template pool, each entry labelled by the daemon
    size: int  # entries kept ready per channel
    max_age: float  # seconds an entry is offered after its acquire was sent
    announced: bool = False  # channels come from announcements (`cnames` is then empty)
    scene: int = 0  # announce checks channel names against Agora's rules for it
    grace: float = 300.0  # seconds an announcement stays pending after its instant
    # What else makes an entry of this pool what it is (replicas publishing another value conflict, and do not
    # fill the pool): the cname or its template, the uid or its range, Agora's clientRequest.
    label: str = ""
    uid: str = ""
    client_request: dict[str, object] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        if self.announced:
            return "announced"
        return "template" if self.cnames is None else "named"

    def identity(self) -> str:
        """What makes an entry of this pool what it is (mode, appid, the cname or its template, the uid or its
        range, Agora's clientRequest), as a short digest: an add acquired under another identity than the one
        published is refused, and queues filled under another one are dropped (see ridpool_add)."""
        return functions.fingerprint(
            {
                "mode": self.mode,
                "appid": self.appid,
                "cname": self.label,
                "uid": self.uid,
                "client_request": json.dumps(self.client_request, sort_keys=True),
            },
            (),
        )

    def fields(self) -> dict[str, str]:
        """The settings (its channels are published apart, as fields `c:<cname>` pops look up)."""
        return {
            "identity": self.identity(),
            "mode": self.mode,
            "appid": self.appid,
            "size": str(self.size),
            "max_age_ms": str(round(self.max_age * 1000)),
            "channels": str(len(self.cnames or ())),
            "scene": str(self.scene),
            "grace_ms": str(round(self.grace * 1000)),
            "cname": self.label,
            "uid": self.uid,
            "client_request": json.dumps(self.client_request, sort_keys=True),
        }

    def fingerprint(self) -> str:
        return functions.fingerprint(self.fields(), self.cnames or ())


def _chunks(names: Sequence[str]) -> list[Sequence[str]]:
    return [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]


def published_channels(keys: PoolKeys) -> Plan[set[str]]:
    """The channels a named pool's publication serves (its `c:` fields), read in pages."""
    found: set[str] = set()
    cursor: int | bytes | str = 0
    while True:
        cursor, pairs = yield ("HSCAN", keys.meta, cursor, "MATCH", "c:*", "COUNT", CHUNK)
        # redis-py hands HSCAN's pairs over as a dict (its reply callback); a bare list by other clients.
        fields = pairs if isinstance(pairs, dict) else pairs[::2]
        found.update(functions.text(f)[2:] for f in fields)
        if int(cursor) == 0:
            return found


def publish_plan(
    keys: PoolKeys, meta: PoolMeta, *, owner: str, live_ms: int, fingerprint: str | None = None
) -> Plan[Published]:
    """Publish the pool unless another live owner publishes another configuration (see the module docstring)."""
    fields = meta.fields()
    fp = fingerprint or meta.fingerprint()
    call = functions.publish_call(keys, fields, owner=owner, fingerprint=fp, live_ms=live_ms)
    published = functions.parse_publish((yield from functions.fcall(call)))
    if published.outcome == "SYNC":
        held = yield from published_channels(keys)
        wanted = set(meta.cnames or ())
        for chunk in _chunks(sorted(wanted - held)):
            yield from functions.fcall(functions.channels_call(keys, "add", chunk))
        for chunk in _chunks(sorted(held - wanted)):
            yield from functions.fcall(functions.channels_call(keys, "remove", chunk))
        commit = functions.publish_call(keys, fields, owner=owner, fingerprint=fp, live_ms=live_ms, commit=True)
        published = functions.parse_publish((yield from functions.fcall(commit)))
    yield ("SADD", registry(keys.prefix), keys.pool)
    return published


def publish(client: redis.Redis, keys: PoolKeys, meta: PoolMeta, *, owner: str = "", live_ms: int = 0) -> Published:
    """Publish the pool's metadata (a channel dropped from the config stops being served), unless another owner
    published a different configuration less than `live_ms` ago (then `ok` is False)."""
    return functions.run(client, publish_plan(keys, meta, owner=owner, live_ms=live_ms))


async def apublish(
    client: redis.asyncio.Redis,
    keys: PoolKeys,
    meta: PoolMeta,
    *,
    owner: str = "",
    live_ms: int = 0,
    fingerprint: str | None = None,
) -> Published:
    """The asyncio twin of `publish`; `fingerprint`: the meta's, when the caller keeps it (it is computed over
    every channel)."""
    return await functions.arun(client, publish_plan(keys, meta, owner=owner, live_ms=live_ms, fingerprint=fingerprint))
