"""`ridpool status`: what Redis says about every pool and replica, as a table or JSON. Reads only; never writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from pool import PoolClient, PoolStats, functions, stats
from pool import keys as keyspace


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


def render(status: Status, console: Console) -> None:
    table = Table(title="ridpool pools", title_justify="left")
    for column in (
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
    ):
        table.add_column(column, justify="left" if column in ("pool", "state", "last error") else "right")
    for s in status.pools:
        if not s.known:
            table.add_row(s.pool, "-", "-", "-", "-", "-", "-", "-", "-", "unknown", "no daemon published it")
            continue
        target = s.target * len(s.channels)
        c = s.counters
        table.add_row(
            s.pool,
            f"{s.size}/{target}",
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
    console.print(table)
    if not status.pools:
        console.print("no pools published yet (is a daemon running with this key prefix?)")
    if status.replicas:
        line = ", ".join(f"{r.id} (up since {r.info.get('started_at', '?')})" for r in status.replicas)
        console.print(f"live replicas: {len(status.replicas)}: {line}")
    else:
        console.print("live replicas: none")
