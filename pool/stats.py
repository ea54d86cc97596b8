"""Reading a pool's state from Redis: what `stats()` returns and `ridpool status` shows.

A few round trips (settings and counters, the channels' names a page at a time, their queues counted in Redis a
chunk at a time, the history), read without a transaction: a status view, not an invariant. Ages are computed
against Redis server time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from ridpool import ages
from ridpool.errors import RidpoolError
from ridpool.functions import CHUNK, Plan, count_call, fcall, parse_count, text
from ridpool.keys import PoolKeys
from ridpool.meta import published_channels

# Counters kept in the stats hash by the functions and the daemon. "expired" (IDs that died unused) is derived,
# not kept: added - pops - dropped - live, because Redis may expire a whole queue before anything could count its
# entries ("dropped": entries of a queue found filled in another data set, after a restore or a failover).
COUNTERS = ("added", "pops", "misses", "refused", "late", "acquires", "errors", "rate_limited", "dropped")
# What the daemon writes in the stats hash about the pool's target (see daemon/refill.py); not counters.
TARGET_FIELDS = ("target", "target_reason", "next_warmup")
HOUR_STEPS = 60  # history steps in the last-hour figures (a minute each, as the daemon samples them)
# The history's snapshot of the counters at its last step (see ridpool_sample): the minute under way is the
# counters now less these.
SNAPSHOT = ("at:added", "at:pops", "at:misses", "at:expired")


@dataclass(frozen=True, slots=True)
class Waste:
    """What the pool did over the last hour (the last 60 one-minute samples of its history)."""

    acquired: int = 0
    popped: int = 0
    expired: int = 0  # expired unused
    misses: int = 0

    @property
    def ratio(self) -> float:
        """Expired unused per acquired: the share of the budget spent on IDs nobody used."""
        return self.expired / self.acquired if self.acquired else 0.0


@dataclass(frozen=True, slots=True)
class ChannelStats:
    cname: str | None  # None: the single queue of a template pool
    size: int
    oldest_age: float | None  # seconds since the oldest entry's acquire was sent


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One pool as Redis holds it now. `target` is per channel; `size` sums every channel's live entries."""

    pool: str
    known: bool  # False: no daemon ever published this pool
    mode: str
    appid: str
    target: int
    max_age: float
    channels: tuple[ChannelStats, ...]
    in_flight: int
    counters: Mapping[str, int]
    # 'ok'; 'retrying' or 'error' (a rejected request) after the last acquire gave up, until one succeeds;
    # 'conflict' while a live replica's config for the pool differs from its owner's (`conflict` says how)
    state: str
    last_error: str
    published_at_ms: int | None
    starts: Mapping[str, int] = field(default_factory=dict)  # reports since the hash was made: 'ok:0-2', 'code:433'
    extra: Mapping[str, str] = field(default_factory=dict)
    target_now: int | None = None  # entries the pool aims to hold now, all channels together (None: not planned)
    target_reason: str = ""  # why: "size 20", "warmup 0 9 * * 1-5 at 2026-11-26T09:00:00+01:00 +200; size 20", ...
    next_warmup: str = ""  # the next warm-up instant, ISO 8601, or ""
    hour: Waste = field(default_factory=Waste)
    held_for: float | None = None  # seconds the pool's hold has left (no replica leases meanwhile); None: not held
    conflict: str = ""  # what the replicas whose config differs from the owner's say, one line each
    # auto_max_age: the decision pops honour now (None: none, pops offer up to max_age), and the last hour's
    # starts by ID age bucket ("0-2", "2-5", ...), from the starters' reports
    freshness: ages.Effective | None = None
    starts_hour: Mapping[str, ages.Tally] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Entries ready to pop, all channels (`ready` everywhere it is shown)."""
        return sum(c.size for c in self.channels)

    @property
    def aim(self) -> int:
        """Entries the pool aims to hold now, all channels: the daemon's plan, or before it published one the
        standing size times the channels (`target` everywhere it is shown)."""
        return self.target_now if self.target_now is not None else self.target * len(self.channels)

    @property
    def aim_per_channel(self) -> float:
        """The aim shared evenly across the pool's channels (the per-channel target of a named pool)."""
        return self.aim / max(1, len(self.channels))

    @property
    def effective_max_age(self) -> float:
        """Seconds an entry is offered after its acquire was sent: the effective max_age (auto_max_age), else
        the configured one."""
        return min(self.freshness.max_age, self.max_age) if self.freshness is not None else self.max_age

    @property
    def oldest_age(self) -> float | None:
        ages = [c.oldest_age for c in self.channels if c.oldest_age is not None]
        return max(ages) if ages else None


@dataclass(frozen=True, slots=True)
class Figure:
    """One pool-wide figure, computed from a PoolStats here and nowhere else: `pool.summary` logs it as `name`
    (daemon/metrics.py exports it by that name too, when it maps the name to a metric), `status --json` shows it
    as `json`."""

    name: str
    json: str
    value: Callable[[PoolStats], int | str]


def _counter(name: str) -> Callable[[PoolStats], int]:
    return lambda s: s.counters[name]


# Every pool-wide figure the views show. To add one: compute it in `build` (a field or a property of PoolStats)
# and add its line here; status --json and pool.summary show it at once, and /metrics once daemon/metrics.py
# names its metric.
FIGURES = (
    Figure("ready", "size", lambda s: s.size),
    Figure("target", "target", lambda s: s.aim),
    Figure("in_flight", "inFlight", lambda s: s.in_flight),
    Figure("state", "state", lambda s: s.state),
    Figure("pops", "pops", _counter("pops")),
    Figure("misses", "misses", _counter("misses")),
    Figure("expired_unused", "expired", _counter("expired")),  # the waste: IDs acquired and never popped
    Figure("acquires", "acquires", _counter("acquires")),
    Figure("errors", "errors", _counter("errors")),
    Figure("rate_limited", "rate_limited", _counter("rate_limited")),
)


def figures(s: PoolStats) -> dict[str, int | str]:
    """The pool's figures by name (the fields of a `pool.summary` event)."""
    return {f.name: f.value(s) for f in FIGURES}


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


# The settings a pool's meta hash holds besides its channels (`c:<cname>`) and data-set marks (`e:<cname>`), which
# a pool of many channels has thousands of: read by name, never with HGETALL.
META_FIELDS = ("mode", "appid", "size", "max_age_ms", "published_at_ms", "channels", *ages.FRESH_FIELDS)


def first_round(keys: PoolKeys) -> list[tuple[str, ...]]:
    return [
        ("TIME",),
        ("HMGET", keys.meta, *META_FIELDS),
        ("HGETALL", keys.stats),
        ("ZCARD", keys.inflight),
        ("HGETALL", keys.starts),
        ("HMGET", keys.history, "last", *SNAPSHOT),
        ("PTTL", keys.hold),
        ("HGETALL", keys.conflicts),
    ]


def server_ms(time_reply: Sequence[Any]) -> int:
    return int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000


HOUR_FIELDS = ("added", "pops", "misses", "expired")  # the order of a history step's four numbers


def last_hour(steps: Sequence[Any], since: Mapping[str, int] | None, now: Mapping[str, int]) -> Waste:
    """The last hour: the history's last whole steps (`steps`, HOUR_STEPS - 1 of them) plus the minute under way,
    what the counters moved since the last step's snapshot (`since`; None: never sampled, nothing to count from).
    A counter below its snapshot was reset (a flushed stats hash) and counts from zero, as in ridpool_sample."""
    totals = [0, 0, 0, 0]
    for step in steps:
        if step is not None:
            for i, value in enumerate(text(step).split()[:4]):
                totals[i] += int(value)
    if since is not None:
        for i, name in enumerate(HOUR_FIELDS):
            moved = now[name] - since[name]
            totals[i] += moved if moved >= 0 else now[name]
    return Waste(acquired=totals[0], popped=totals[1], misses=totals[2], expired=totals[3])


def _problem(replies: Sequence[Any]) -> str:
    """The first error Redis answered in a round (read with raise_on_error=False), as text; '' when none."""
    return next((f"{type(r).__name__}: {r}" for r in replies if isinstance(r, Exception)), "")


def damaged(keys: PoolKeys, problem: str) -> PoolStats:
    """A pool whose keys cannot be read: shown in error with the reason, never a traceback."""
    return PoolStats(
        pool=keys.pool,
        known=True,
        mode="",
        appid="",
        target=0,
        max_age=0.0,
        channels=(),
        in_flight=0,
        counters={name: 0 for name in (*COUNTERS, "expired")},
        state="error",
        last_error=f"damaged keys: {problem}",
        published_at_ms=None,
    )


def channel_list(keys: PoolKeys, mode: str, now_ms: int) -> Plan[list[str | None]]:
    """The queues of a published pool, read in pages: one per named channel, the template pool's single queue,
    or the announced channels whose queues may hold entries."""
    if mode == "template" or not mode:
        return [None] if mode else []
    found: list[str | None] = []
    if mode == "named":
        found += sorted((yield from published_channels(keys)))
        return found
    offset = 0
    while True:
        page = yield (
            "ZRANGEBYSCORE",
            keys.announced_queues,
            f"({now_ms}",
            "+inf",
            "LIMIT",
            offset,
            CHUNK,
        )
        found += [text(c) for c in page]
        if len(page) < CHUNK:
            return found
        offset += CHUNK


def queues(keys: PoolKeys, mode: str, now_ms: int) -> Plan[list[tuple[str | None, tuple[int, int | None]]]]:
    """Every queue of the pool with its live entries and the expiry of its oldest, counted in Redis a chunk of
    queues at a time (so a pool of 10,000 channels is 10 short calls, not 20,000 commands)."""
    names = yield from channel_list(keys, mode, now_ms)
    counted: list[tuple[int, int | None]] = []
    for i in range(0, len(names), CHUNK):
        _, chunk = parse_count((yield from fcall(count_call(keys, names[i : i + CHUNK]))))
        counted += chunk
    return list(zip(names, counted, strict=True))


def live(keys: PoolKeys, mode: str) -> Plan[int]:
    """The pool's live entries, all queues together (the demand history's sample takes it)."""
    now = server_ms((yield ("TIME",)))
    return sum(n for _, (n, _) in (yield from queues(keys, mode, now)))


def read(keys: PoolKeys) -> Plan[PoolStats]:
    """One pool as Redis holds it now: settings and counters, then every queue's live entries and oldest
    (`queues`), then the last hour's history. A key Redis refuses makes it `damaged`, never a traceback."""
    first: list[Any] = yield list(first_round(keys))
    problem = _problem(first)
    if problem:
        return damaged(keys, problem)
    try:
        meta = dict(zip(META_FIELDS, (None if v is None else text(v) for v in first[1]), strict=True))
        now = server_ms(first[0])
        counted = yield from queues(keys, meta["mode"] or "", now)
        history: Sequence[Any] = []
        if first[5][0] is not None:
            newest = int(first[5][0])
            history = yield ("HMGET", keys.history, *(str(newest - i) for i in range(HOUR_STEPS - 1)))
    except redis.ResponseError as exc:
        return damaged(keys, f"{type(exc).__name__}: {exc}")
    except RidpoolError as exc:
        return damaged(keys, str(exc))
    try:
        return build(keys, first, meta, counted, history)
    except (ValueError, TypeError, IndexError, KeyError) as exc:  # a hash holding what no daemon wrote
        return damaged(keys, f"unreadable metadata ({exc})")


def build(
    keys: PoolKeys,
    first: Sequence[Any],
    meta: Mapping[str, str | None],
    queues: Sequence[tuple[str | None, tuple[int, int | None]]],
    history: Sequence[Any],
) -> PoolStats:
    """The pool's state from what `read` gathered: every figure is computed here (or in a property of
    PoolStats), once, and every view (status, stats(), /metrics, pool.summary) reads it from there."""
    time_reply, _, stats_raw, in_flight, starts_raw, snapshot, hold_ms, conflicts_raw = first
    now_ms = server_ms(time_reply)
    conflict = conflicts(conflicts_raw, now_ms)
    raw = decode_hash(stats_raw)
    starts = decode_hash(starts_raw)
    max_age_ms = int(meta.get("max_age_ms") or "0")
    channels = []
    for cname, (size, oldest) in queues:
        # Scored by expires-at = sent-at + max_age, so the lowest score is the oldest entry.
        age = max(0.0, (now_ms - (oldest - max_age_ms)) / 1000) if oldest is not None and size else None
        channels.append(ChannelStats(cname, size, age))
    counters = {name: int(raw.get(name, "0")) for name in COUNTERS}
    live = sum(c.size for c in channels)
    counters["expired"] = max(0, counters["added"] - counters["pops"] - counters["dropped"] - live)
    taken = snapshot[1:]
    since = None if snapshot[0] is None or None in taken else dict(zip(HOUR_FIELDS, map(int, taken), strict=True))
    published = meta.get("published_at_ms")
    return PoolStats(
        pool=keys.pool,
        known=meta.get("mode") is not None,
        mode=meta.get("mode") or "",
        appid=meta.get("appid") or "",
        target=int(meta.get("size") or "0"),
        max_age=max_age_ms / 1000,
        channels=tuple(channels),
        in_flight=int(in_flight),
        counters=counters,
        state="conflict" if conflict else raw.get("state", "ok"),
        last_error=raw.get("last_error", ""),
        published_at_ms=int(published) if published else None,
        starts=ages.cumulative(starts),
        extra={k: v for k, v in raw.items() if k not in (*COUNTERS, *TARGET_FIELDS, "state", "last_error")},
        target_now=int(raw["target"]) if raw.get("target", "").isdigit() else None,
        target_reason=raw.get("target_reason", ""),
        next_warmup=raw.get("next_warmup", ""),
        hour=last_hour(history, since, counters),
        held_for=int(hold_ms) / 1000 if int(hold_ms) > 0 else None,
        conflict=conflict,
        freshness=ages.effective(meta, now_ms),
        starts_hour=dict(ages.hour_rates(ages.over(ages.per_minute(starts), now_minute=now_ms // 60_000))),
    )


def conflicts(raw: Mapping[Any, Any], now_ms: int) -> str:
    """The live records of `ridpool_conflict` ('<until ms> <message>' per replica), one line each."""
    lines = []
    for value in decode_hash(raw).values():
        until, _, message = value.partition(" ")
        if until.isdigit() and int(until) > now_ms:
            lines.append(message)
    return "\n".join(sorted(lines))
