"""Learned demand (`auto_size = true`, `max_size = N`): raise a pool's target ahead of demand that recurs at the
same minute of the day or of the week, from the per-minute history the daemon samples (`ridpool_sample`). With
`auto_size = "forecast"` the same forecast is computed and shown (status, `ridpool_pool_forecast`, `ridpool
plan`) without raising anything, so that an operator can judge it before letting it act.

The history holds, per pool and minute, what was added, popped, missed and expired unused: counters, never an
ID. Demand in a minute is its pops plus its misses (a miss is a start the pool could not serve). A minute is
expected to recur when the same minute

- of each of the last WEEKS_SEEN weeks saw at least MIN_BURST starts (a weekly schedule: Monday 09:00), or
- of each of the last DAYS_SEEN days did (a daily one), unless the same minute a week ago was recorded
  without it (a weekday schedule does not recur on Saturday);

the forecast is the least of those (what recurred every time, not a peak seen once). Forecast minutes become
demands that must be ready by the minute, with no window after it, planned with every other demand. Together they
never raise a channel above `max_size`, and they never lower it below `size` (they only add to it).

Pure functions of the history and a minute index, so a test replays recorded history with its own clock;
`LearnedSource` reads the history from Redis once per minute and logs every raise (`demand.learned`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from ridpool import functions
from ridpool.daemon.planner import Demand

if TYPE_CHECKING:
    from ridpool.daemon.sources import SourceContext

log = structlog.get_logger("ridpool.demand")

DAY, WEEK = 1440, 10080  # minutes
DAYS_SEEN, WEEKS_SEEN = 3, 2
MIN_BURST = 3  # starts in one minute that count as demand worth preparing for


@dataclass(frozen=True, slots=True)
class Forecast:
    minute: int  # minute index (server ms // 60000)
    count: int  # starts expected in that minute, the whole pool
    reason: str


def lags(minute: int, day: int = DAY) -> list[int]:
    """The past minutes a forecast for `minute` reads (`day`: steps in a day, when a step is not a minute)."""
    week = 7 * day
    return [minute - k * day for k in range(1, DAYS_SEEN + 1)] + [minute - k * week for k in range(1, WEEKS_SEEN + 1)]


def forecast(history: Mapping[int, int], minute: int, day: int = DAY) -> Forecast | None:
    """The demand expected in `minute` from the history (minute -> starts; absent: not recorded), or None."""
    found = []
    week = 7 * day
    weekly = [history.get(minute - k * week, 0) for k in range(1, WEEKS_SEEN + 1)]
    if min(weekly) >= MIN_BURST:
        why = f"learned weekly: {min(weekly)}+ starts at this minute {WEEKS_SEEN} weeks running"
        found.append(Forecast(minute, min(weekly), why))
    daily = [history.get(minute - k * day, 0) for k in range(1, DAYS_SEEN + 1)]
    week_ago = history.get(minute - week)
    if min(daily) >= MIN_BURST and (week_ago is None or week_ago >= MIN_BURST):
        why = f"learned daily: {min(daily)}+ starts at this minute {DAYS_SEEN} days running"
        found.append(Forecast(minute, min(daily), why))
    return max(found, key=lambda f: f.count) if found else None


def planning_horizon(max_age_ms: int, step_ms: int = 60_000) -> int:
    """Steps ahead the daemon plans learned demand over: as far as an entry acquired now could live, and one more
    (within it the room to max_size is shared)."""
    return math.ceil(max_age_ms / step_ms) + 1


def learned_demands(
    pool: str,
    cnames: Sequence[str | None],
    history: Mapping[int, int],
    *,
    now_minute: int,
    horizon: int,
    room: int,
    step_ms: int = 60_000,
    channels: int | None = None,
    window: int | None = None,
) -> list[Demand]:
    """Demands for the minutes after `now_minute` up to `horizon` minutes ahead, per channel, adding together
    at most `room` (max_size - size) to any channel within any `window` minutes (None: the whole horizon, what
    the daemon plans over each minute; `ridpool plan` looks a day ahead with the daemon's horizon as the window);
    `channels` (default: one per cname) shares a pool's forecast among its channels."""
    out: list[Demand] = []
    given: dict[int, int] = {}  # minute -> per channel, for the room left within the window
    share = channels or len(cnames)
    for minute in range(now_minute + 1, now_minute + horizon + 1):
        f = forecast(history, minute, 86_400_000 // step_ms)
        left = room - sum(n for m, n in given.items() if window is None or m > minute - window)
        if f is None or left <= 0:
            continue
        per_channel = min(left, math.ceil(f.count / share))
        given[minute] = per_channel
        at = minute * step_ms
        out += [Demand(pool, c, per_channel, at, at, f.reason) for c in cnames]
    return out


def parse_history(minutes: Sequence[int], replies: Sequence[object]) -> dict[int, int]:
    """HMGET replies of history steps ('added pops misses expired') as minute -> pops + misses."""
    out = {}
    for minute, reply in zip(minutes, replies, strict=True):
        if reply is not None:
            fields = functions.text(reply).split()
            out[minute] = int(fields[1]) + int(fields[2])
    return out


class LearnedSource:
    """Learned demands of the pools with auto_size, from their history in Redis (read once per step, a minute).
    A demand source (`daemon/sources.py`). With auto_size = "forecast" it computes the same demands and only
    shows them (`notes`: what they would add, in the stats hash for status and ridpool_pool_forecast)."""

    def __init__(self, context: SourceContext) -> None:
        # The history's step (a minute; tests shorten it, and a day is then 86400 s / step steps).
        self.step_ms = round(context.timing.history_step * 1000)
        self.redis = context.redis
        self.configs = {p.name: p for p in context.config.pools if p.learns}
        self.keys = {name: context.keys(name) for name in self.configs}
        self.found: dict[str, tuple[int, list[Demand]]] = {}  # pool -> (the step read at, its demands)
        self.logged: set[tuple[str, int]] = set()  # (pool, minute) raises already logged

    @property
    def pools(self) -> Sequence[str]:
        return list(self.configs)

    async def refresh(self, pool: str, now_ms: int, changed: frozenset[str]) -> None:
        minute = now_ms // self.step_ms
        if self.found.get(pool, (-1, []))[0] == minute:
            return
        config = self.configs[pool]
        day = 86_400_000 // self.step_ms
        horizon = planning_horizon(config.max_age_ms, self.step_ms)
        wanted = sorted({lag for m in range(minute + 1, minute + horizon + 1) for lag in lags(m, day)})
        with functions.reaching(self.redis):
            replies = await self.redis.hmget(self.keys[pool].history, [str(m) for m in wanted])
        found = learned_demands(
            pool,
            [None],
            parse_history(wanted, replies),
            now_minute=minute,
            horizon=horizon,
            room=(config.max_size or 0) - config.size,
            step_ms=self.step_ms,
            channels=max(1, len(config.slots)),
        )
        event = "demand.learned" if config.acts_on_learned else "demand.forecast"
        for d in found:
            if (pool, d.at_ms) not in self.logged:
                self.logged.add((pool, d.at_ms))
                log.info(event, pool=pool, at_ms=d.at_ms, per_channel=d.count, reason=d.source)
        self.logged = {(p, at) for p, at in self.logged if at > now_ms}
        self.found[pool] = (minute, found)

    def demands(self, pool: str, now_ms: int) -> Sequence[Demand]:
        return self.found.get(pool, (-1, []))[1] if self.configs[pool].acts_on_learned else ()

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]:
        return forecast_notes(self.found.get(pool, (-1, []))[1], max(1, len(self.configs[pool].slots)))


def forecast_notes(found: Sequence[Demand], channels: int) -> dict[str, str]:
    """What learned demand adds (or, in forecast mode, would add) to the pool within the planning horizon, for
    its stats hash: `forecast` (entries, all channels), `forecast_at` (its first minute, ISO 8601 UTC, or ""),
    `forecast_reason` (the largest minute's reason)."""
    if not found:
        return {"forecast": "0", "forecast_at": "", "forecast_reason": ""}
    first = min(d.at_ms for d in found)
    return {
        "forecast": str(sum(d.count for d in found) * channels),
        "forecast_at": datetime.fromtimestamp(first / 1000, UTC).isoformat(timespec="seconds"),
        "forecast_reason": max(found, key=lambda d: (d.count, -d.at_ms)).source,
    }
