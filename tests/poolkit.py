"""Helpers that put entries into Redis the way the daemon does, for tests of the consumer side."""

from __future__ import annotations

import itertools

import redis
from ridpool import functions
from ridpool.entry import Entry
from ridpool.functions import AddResult
from ridpool.keys import pool_keys
from ridpool.meta import PoolMeta, publish

APPID = "0123456789abcdef0123456789abcdef"
_serial = itertools.count()


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def publish_pool(
    r: redis.Redis,
    prefix: str,
    pool: str,
    *,
    cnames: tuple[str, ...] | None = None,
    size: int = 10,
    max_age: float = 270.0,
) -> None:
    publish(r, pool_keys(prefix, pool), PoolMeta(pool, APPID, cnames, size, max_age))


def make_entry(
    r: redis.Redis, pool: str, *, cname: str = "web-x", life: float = 200.0, rid: str | None = None, uid: str = "527841"
) -> Entry:
    now = server_ms(r)
    return Entry(
        resource_id=rid or f"rid-{next(_serial):06d}-" + "x" * 200,
        appid=APPID,
        cname=cname,
        uid=uid,
        pool=pool,
        sent_at_ms=now,
        expires_at_ms=now + round(life * 1000),
        request_id=f"req-{next(_serial)}",
    )


def add(r: redis.Redis, prefix: str, entry: Entry, *, named: bool = False) -> AddResult:
    keys = pool_keys(prefix, entry.pool)
    call = functions.add_call(keys, entry, queue_cname=entry.cname if named else None)
    return functions.parse_add(functions.execute(r, call))


def fill(
    r: redis.Redis, prefix: str, pool: str, n: int, *, cname: str = "web-x", named: bool = False, life: float = 200.0
) -> list[Entry]:
    entries = [make_entry(r, pool, cname=cname, life=life) for _ in range(n)]
    keys = pool_keys(prefix, pool)
    functions.load_library(r)
    pipe = r.pipeline(transaction=False)
    for e in entries:
        call = functions.add_call(keys, e, queue_cname=cname if named else None)
        pipe.fcall(call.function, len(call.keys), *call.keys, *call.args)
    assert all(x == b"ADDED" for x in pipe.execute())
    return entries
