"""`ridpool status`: what Redis says about every pool and replica, as a table or JSON. Reads only; never writes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ridpool import functions, stats
from ridpool import keys as keyspace
from ridpool.client import PoolClient
from ridpool.errors import RidpoolError
from ridpool.stats import PoolStats


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    info: dict[str, str]


@dataclass(frozen=True, slots=True)
class Status:
    pools: list[PoolStats]
    replicas: list[Replica]
    hint: str = ""  # when a pool is unknown or none is published: the key prefix used, and pools under others


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
    hint = ""
    if not per_pool or not all(s.known for s in per_pool):
        hint = with_prefix(client, "").strip()
    return Status(per_pool, replicas, hint)


SCAN_PAGES = 10  # pages of SCAN (1,000 keys each) `elsewhere` reads at most: a hint, not an inventory


def elsewhere(client: PoolClient) -> dict[str, list[str]]:
    """Pools published under other key prefixes (prefix -> pool names), found by a SCAN bounded in pages: what
    a starter using the wrong prefix is shown. {} when there are none, or Redis refuses the look."""
    own = keyspace.registry(client.prefix)
    found: dict[str, list[str]] = {}
    cursor: int = 0
    try:
        with functions.reaching(client.redis):
            for _ in range(SCAN_PAGES):
                cursor, names = client.redis.scan(cursor, match=keyspace.registry("*"), count=1000, _type="set")
                for name in map(functions.text, names):
                    if name != own:
                        found[name.removesuffix(keyspace.registry(""))] = sorted(
                            functions.text(p) for p in client.redis.smembers(name)
                        )
                if cursor == 0:
                    break
    except RidpoolError:
        return {}
    return found


def with_prefix(client: PoolClient, why: str) -> str:
    """`why` (no daemon published a pool) with the key prefix used and the pools under other prefixes, if any."""
    others = elsewhere(client)
    shown = "; ".join(f"{prefix!r}: {', '.join(pools)}" for prefix, pools in sorted(others.items()))
    return f"{why} (key prefix {client.prefix!r}" + (f"; published under other prefixes: {shown})" if shown else ")")


def problems(status: Status) -> list[str]:
    """What `status --check` fails on: a pool unknown or not in state ok, no pool at all, no live replica."""
    found = []
    if not status.pools:
        found.append(f"no pools published {status.hint}".rstrip())
    for s in status.pools:
        if not s.known:
            found.append(f"pool {s.pool!r} unknown (no daemon published it) {status.hint}".rstrip())
        elif s.state == "conflict":
            found.append(f"pool {s.pool!r} is in conflict: {' / '.join(s.conflict.splitlines())}")
        elif s.state != "ok":
            # Whole (at most 500 characters, as the daemon keeps it): a cut would split the X-Request-Id.
            why = f": {' '.join(s.last_error.split())}" if s.last_error else ""
            found.append(f"pool {s.pool!r} is {s.state}{why}")
    if not status.replicas:
        found.append("no live replica")
    return found


def as_json(status: Status) -> dict[str, Any]:
    return {
        "pools": [
            {
                "pool": s.pool,
                "known": s.known,
                "mode": s.mode,
                "targetPerChannel": s.target,
                "targetReason": s.target_reason,
                "nextWarmup": s.next_warmup or None,
                "lastHour": {
                    "acquired": s.hour.acquired,
                    "popped": s.hour.popped,
                    "expiredUnused": s.hour.expired,
                    "misses": s.hour.misses,
                    "wasteRatio": round(s.hour.ratio, 4),
                },
                "channels": [{"cname": c.cname, "size": c.size, "oldestAge": c.oldest_age} for c in s.channels],
                "oldestAge": s.oldest_age,
                "maxAge": s.max_age,
                "effectiveMaxAge": s.effective_max_age,
                **({"freshness": freshness(s)} if s.freshness is not None else {}),
                "startsLastHour": {
                    age: {"ok": t.ok, "failed": t.failed, "failureRate": round(t.rate, 4)}
                    for age, t in s.starts_hour.items()
                },
                **({"forecast": forecast(s)} if "forecast" in s.extra else {}),
                "heldFor": s.held_for,
                "lastError": s.last_error,
                "conflict": s.conflict or None,
                "starts": dict(s.starts),
                **({"announcements": announcements(s)} if s.mode == "announced" else {}),
                **dict(s.counters),
                **{f.json: f.value(s) for f in stats.FIGURES},
            }
            for s in status.pools
        ],
        "replicas": [{"id": r.id, **r.info} for r in status.replicas],
    }


def freshness(s: PoolStats) -> dict[str, Any]:
    """auto_max_age: the decision pops honour now, as the daemon stored it."""
    f = s.freshness
    assert f is not None
    return {
        "maxAge": f.max_age,
        "sinceMinute": f.since,
        "probe": f.probe or None,
        "probeShare": f.share,
        "probeUpTo": f.up_to if f.probe == "older" else None,
        "reason": f.reason,
    }


def forecast(s: PoolStats) -> dict[str, Any]:
    """What learned demand adds (auto_size true) or would add ("forecast") within the planning horizon, as the
    daemon last wrote it in the stats hash."""
    entries = s.extra.get("forecast", "0")
    return {
        "entries": int(entries) if entries.isdigit() else 0,
        "at": s.extra.get("forecast_at") or None,
        "reason": s.extra.get("forecast_reason", ""),
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
    "held",
    "last error",
)
_LEFT = {"pool", "state", "last error"}


def rows(status: Status) -> list[tuple[str, ...]]:
    """One row of `COLUMNS` per pool, as text."""
    out: list[tuple[str, ...]] = []
    for s in status.pools:
        if not s.known:
            out.append((s.pool, "-", "-", "-", "-", "-", "-", "-", "-", "unknown", "-", "no daemon published it"))
            continue
        f = stats.figures(s)
        out.append(
            (
                s.pool,
                f"{f['ready']}/{f['target']}",
                _age(s.oldest_age),
                *(str(f[name]) for name in ("in_flight", "pops", "misses", "expired_unused", "acquires", "errors")),
                s.state,
                "-" if s.held_for is None else f"{math.ceil(s.held_for)}s",
                s.last_error[:60],
            )
        )
    return out


def plan_line(s: PoolStats) -> str:
    """Why the pool aims at its target now, its next warm-up, and what the last hour cost."""
    h = s.hour
    f = forecast(s) if "forecast" in s.extra else None
    learned = f"; learned demand would add {f['entries']} by {f['at']} ({f['reason']})" if f and f["entries"] else ""
    return (
        f"{s.pool}: target {s.aim} ({s.target_reason or 'size'}); next warm-up {s.next_warmup or 'none'}; "
        f"last hour: acquired {h.acquired}, popped {h.popped}, expired unused {h.expired} "
        f"(waste {h.ratio:.1%}), misses {h.misses}{learned}"
    )


def freshness_line(s: PoolStats) -> str:
    """The max_age offered now (and why, with auto_max_age), and the last hour's start failures by ID age."""
    f = s.freshness
    age = f"max_age {s.effective_max_age:g}s" + (f" of {s.max_age:g}s ({f.reason})" if f is not None else "")
    starts = ", ".join(f"{a} {t.failed}/{t.n}" for a, t in s.starts_hour.items()) or "none reported"
    return f"{s.pool}: {age}; starts failed by ID age (s), last hour: {starts}"


def announcements(s: PoolStats) -> dict[str, Any]:
    """An announced pool's pending announcements, next deadline and those at risk, as its daemon last saw them."""
    at_risk = s.extra.get("announced_at_risk_cnames", "")
    return {
        "pending": int(s.extra.get("announced_pending", "0")),
        "nextDeadline": s.extra.get("announced_next") or None,
        "atRisk": int(s.extra.get("announced_at_risk", "0")),
        "atRiskCnames": at_risk.split(",") if at_risk else [],
    }


def announcement_line(s: PoolStats) -> str:
    a = announcements(s)
    risk = f"{a['atRisk']} ({', '.join(a['atRiskCnames'])})" if a["atRisk"] else "none"
    return (
        f"{s.pool}: announcements pending {a['pending']}; next deadline {a['nextDeadline'] or 'none'}; at risk {risk}"
    )


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
        lines.append(f"no pools published yet {status.hint}".rstrip())
    lines += [plan_line(s) for s in status.pools if s.known]
    lines += [freshness_line(s) for s in status.pools if s.known and (s.freshness is not None or s.starts_hour)]
    lines += [announcement_line(s) for s in status.pools if s.mode == "announced"]
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
