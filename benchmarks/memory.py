"""Memory: Redis bytes per pooled entry, summed over every key of the pool, against the raw resourceId.

The anchor is the 240 bytes of the resourceId itself: what a pool would cost if Redis stored nothing else. Pools
are filled through `ridpool_add` as the daemon fills them, so the queue (msgpack entries in a zset), the ledger
(sha1 of every ID), the ready list, the counters, the metadata and (for a uid_range pool) the uids index are all
there. `MEMORY USAGE key SAMPLES 0` measures every element, not a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
from ridpool.entry import encode

from benchmarks.common import Sizes, clean, fill, keys_for, make_entry, publish_pool, server_ms


@dataclass(frozen=True, slots=True)
class MemoryResult:
    label: str
    entries: int
    total_bytes: int
    by_key: dict[str, int]  # key suffix after the hash tag -> bytes
    entry_bytes: int  # one stored (msgpack) entry
    rid_bytes: int  # one resourceId: the anchor

    @property
    def per_entry(self) -> float:
        return self.total_bytes / self.entries

    @property
    def ratio(self) -> float:
        return self.per_entry / self.rid_bytes


def _usage(r: redis.Redis, tag: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for key in r.scan_iter(match=f"{tag}:*", count=1000):
        name = key.decode()
        found[name.removeprefix(tag + ":")] = int(r.memory_usage(name, samples=0) or 0)
    return found


def _measure(r: redis.Redis, label: str, pool: str, n: int, *, named: bool) -> MemoryResult:
    keys = keys_for(pool)
    cname = "room-1" if named else None
    publish_pool(r, keys, cnames=(cname,) if cname else None, size=n)
    # A uid_range pool holds one uid per live entry in its uids index, as the daemon's leases leave them.
    uids = [str(900_000 + i) for i in range(n)] if named else []
    fill(r, keys, n, cname=cname, uids=uids)
    by_key = _usage(r, keys.tag)
    sample = make_entry(pool, server_ms(r), cname=cname)
    return MemoryResult(label, n, sum(by_key.values()), by_key, len(encode(sample)), len(sample.resource_id))


def run(r: redis.Redis, sizes: Sizes) -> list[MemoryResult]:
    clean(r)
    n = sizes.memory_entries
    results = [
        _measure(r, "template pool (web-{uuid}), 40 entries", "mem-web-40", 40, named=False),
        _measure(r, f"template pool (web-{{uuid}}), {n:,} entries", "mem-web", n, named=False),
        _measure(r, f"named channel + uid_range, {n:,} entries", "mem-rooms", n, named=True),
    ]
    for m in results:
        print(f"  memory {m.label}: {m.per_entry:.0f} B/entry ({m.ratio:.2f}x the resourceId)", flush=True)
    clean(r)
    return results
