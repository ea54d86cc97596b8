"""`ridpool status`: what Redis says about every pool and replica, as a table or JSON. Reads only; never writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ridpool import functions, stats
from ridpool import keys as keyspace
from ridpool.client import PoolClient
from ridpool.stats import PoolStats


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    info: dict[str, str]


@dataclass(frozen=True, slots=True)
class Status:
    pools: list[PoolStats]
    replicas: list[Replica]


def gather(client: PoolClient, pools: Sequence[str] | None = None) -> Status:
    """Every published pool (or the named ones) and the replicas whose heartbeat is still alive."""
    names = list(pools) if pools else client.pools()
    per_pool = [client.stats(name) for name in names]
    replicas = []
    with functions.reaching(client.redis):
        ids = [functions.text(i) for i in client.redis.zrange(keyspace.replicas(client.prefix), 0, -1)]
        for rid in ids:
            info = stats.decode_hash(client.redis.hgetall(keyspace.replica(client.prefix, rid)))
            if info:  # the hash expires with the heartbeat: an empty one is a replica that stopped or died
                replicas.append(Replica(rid, info))
    return Status(per_pool, replicas)


def as_json(status: Status) -> dict[str, Any]:
    return {
        "pools": [
            {
                "pool": s.pool,
                "known": s.known,
                "mode": s.mode,
                "size": s.size,
                "target": s.target * len(s.channels),
                "targetPerChannel": s.target,
                "channels": [{"cname": c.cname, "size": c.size, "oldestAge": c.oldest_age} for c in s.channels],
                "oldestAge": s.oldest_age,
                "inFlight": s.in_flight,
                "maxAge": s.max_age,
                "state": s.state,
                "lastError": s.last_error,
                "starts": dict(s.starts),
                **dict(s.counters),
            }
            for s in status.pools
        ],
        "replicas": [{"id": r.id, **r.info} for r in status.replicas],
    }


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}s"


COLUMNS = (
    "pool",
    "ready",
    "oldest",
    "in flight",
    "pops",
    "misses",
    "expired",
    "acquires",
    "errors",
    "state",
    "last error",
)
_LEFT = {"pool", "state", "last error"}


def rows(status: Status) -> list[tuple[str, ...]]:
    """One row of `COLUMNS` per pool, as text."""
    out: list[tuple[str, ...]] = []
    for s in status.pools:
        if not s.known:
            out.append((s.pool, "-", "-", "-", "-", "-", "-", "-", "-", "unknown", "no daemon published it"))
            continue
        c = s.counters
        out.append(
            (
                s.pool,
                f"{s.size}/{s.target * len(s.channels)}",
                _age(s.oldest_age),
                str(s.in_flight),
                str(c["pops"]),
                str(c["misses"]),
                str(c["expired"]),
                str(c["acquires"]),
                str(c["errors"]),
                s.state,
                s.last_error[:60],
            )
        )
    return out


def render(status: Status) -> str:
    """The status as a plain text table (no terminal library: the starter-side install has none)."""
    table = [COLUMNS, *rows(status)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]

    def text_row(row: tuple[str, ...]) -> str:
        cells = zip(COLUMNS, row, widths, strict=True)
        return "  ".join(cell.ljust(w) if name in _LEFT else cell.rjust(w) for name, cell, w in cells).rstrip()

    lines = [text_row(row) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not status.pools:
        lines.append("no pools published yet (is a daemon running with this key prefix?)")
    if status.replicas:
        line = ", ".join(f"{r.id} (up since {r.info.get('started_at', '?')})" for r in status.replicas)
        lines.append(f"live replicas: {len(status.replicas)}: {line}")
    else:
        lines.append("live replicas: none")
    lines += [f"warning: {text}" for text in warnings(status)]
    return "\n".join(lines)


def warnings(status: Status) -> list[str]:
    """What live replicas ask every status to show (eviction allowed or risked, a pool owned by another config)."""
    return [
        f"replica {r.id}: {line}" for r in status.replicas for line in r.info.get("warnings", "").splitlines() if line
    ]
