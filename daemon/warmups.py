"""Scheduled warm-ups (`[[pools.warmups]]`): their cron instants and the demands they make.

The instants come from APScheduler's `CronTrigger`. Its 3.x series reads the weekday field with 0 = Monday,
unlike crontab (0 and 7 = Sunday), and says so in its docs (issue 286): the weekday field is therefore rewritten
here into day names, which both read alike, before the trigger sees it. Everything else is APScheduler's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from ridpool.daemon.planner import Demand

if TYPE_CHECKING:
    from ridpool.daemon.config import PoolConfig
    from ridpool.daemon.sources import SourceContext

DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day(token: str) -> int:
    name = token.lower()
    if name in DAYS:
        return DAYS.index(name)
    if not token.isdigit() or int(token) > 7:
        raise ValueError(f"weekday {token!r} must be 0-7 (0 and 7: Sunday) or sun..sat")
    return int(token) % 7


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field (0/7 = Sunday, ranges, steps, names) as APScheduler day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"weekday step {step_text!r} must be a positive integer")
        if body == "*":
            lo, hi = 0, 6
        elif "-" in body:
            first, _, last = body.partition("-")
            lo, hi = _day(first), _day(last)
            if last == "7":
                hi = 7  # "5-7": Friday to Sunday
            if hi < lo:
                raise ValueError(f"weekday range {body!r} runs backwards")
        else:
            lo = hi = _day(body)
            if step is not None:
                hi = 6  # "1/2": from Monday every other day, as cron reads it
        days.update(d % 7 for d in range(lo, hi + 1, step or 1))
    return ",".join(DAYS[d] for d in sorted(days))


def trigger(cron: str, timezone: str = "UTC") -> CronTrigger:
    """The trigger of a crontab expression in an IANA zone; ValueError naming what is wrong."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}; use an IANA name such as Europe/Berlin") from None
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"must have 5 fields (minute hour day month weekday), got {len(fields)}")
    try:
        return CronTrigger(
            minute=fields[0],
            hour=fields[1],
            day=fields[2],
            month=fields[3],
            day_of_week=crontab_weekdays(fields[4]),
            timezone=zone,
        )
    except ValueError as exc:
        raise ValueError(str(exc).replace("Error validating expression", "invalid field")) from None


@dataclass(frozen=True, slots=True)
class Warmup:
    """One `[[pools.warmups]]` table, ready to compute instants."""

    pool: str
    index: int
    cron: str
    timezone: str
    size: int
    duration: float

    def instants(self, after: datetime, until: datetime, limit: int = 10_000) -> Iterator[datetime]:
        """The instants from `after` (inclusive) up to `until` (exclusive), at most `limit` of them."""
        cron = trigger(self.cron, self.timezone)
        previous: datetime | None = None
        at = cron.get_next_fire_time(None, after)
        for _ in range(limit):
            if at is None or at >= until:
                return
            yield at
            previous = at
            at = cron.get_next_fire_time(previous, previous + timedelta(microseconds=1))

    def running_and_next(self, now: datetime, horizon: timedelta) -> list[datetime]:
        """Instants whose window runs at `now`, and those due within `horizon`."""
        return list(self.instants(now - timedelta(seconds=self.duration) + timedelta(microseconds=1), now + horizon))

    def label(self, at: datetime) -> str:
        return f"warmup {self.cron} at {at.isoformat()}"


def to_ms(at: datetime) -> int:
    return math.floor(at.timestamp() * 1000)


def from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def local(ms: float, timezone: str) -> datetime:
    """A server-ms instant in the zone its warm-up was written in."""
    return from_ms(ms).astimezone(ZoneInfo(timezone))


RECOMPUTE_MS = 10_000  # instants are recomputed this often, not every round


class WarmupSource:
    """The demands of every pool's warm-ups at a server instant: the windows running now and the instants due
    soon enough to plan for. A demand source (`daemon/sources.py`): each is consumable (pops use it up), so the
    refill takes what was popped since the instant off it; entries that expired unused are replaced while the
    window runs."""

    def __init__(self, context: SourceContext) -> None:
        # Instants are computed on server time + shift_ms: tests and benchmarks move a cron instant to when they
        # want it (0 in production).
        self.shift_ms = round(context.timing.warmup_shift * 1000)
        self.configs = {p.name: p for p in context.config.pools if p.warmups and p.slots}
        self.keys = {name: context.keys(name) for name in self.configs}
        self.specs = {
            p.name: [Warmup(p.name, j, w.cron, w.timezone, w.size, w.duration) for j, w in enumerate(p.warmups)]
            for p in self.configs.values()
        }
        self.cache: dict[str, tuple[int, list[tuple[Warmup, int]], int | None]] = {}

    @property
    def pools(self) -> Sequence[str]:
        return list(self.configs)

    def _instants(self, pool: PoolConfig, now_ms: int) -> tuple[list[tuple[Warmup, int]], int | None]:
        """(warm-up, instant ms) running or due within the planning horizon, and the next instant after now."""
        cached = self.cache.get(pool.name)
        if cached is None or not cached[0] <= now_ms < cached[0] + RECOMPUTE_MS:
            # Far enough ahead that no instant can need acquiring before it comes into view (its entries would
            # die first), plus the time until the next recompute.
            horizon = timedelta(milliseconds=pool.max_age_ms * 2 + 60_000 + RECOMPUTE_MS)
            now = from_ms(now_ms + self.shift_ms)
            found = [
                (w, to_ms(at) - self.shift_ms) for w in self.specs[pool.name] for at in w.running_and_next(now, horizon)
            ]
            upcoming = [
                to_ms(at) - self.shift_ms
                for w in self.specs[pool.name]
                if (at := trigger(w.cron, w.timezone).get_next_fire_time(None, now)) is not None
            ]
            cached = (now_ms, found, min(upcoming) if upcoming else None)
            self.cache[pool.name] = cached
        return cached[1], cached[2]

    def next_instant(self, pool: str, now_ms: int) -> int | None:
        """The pool's next warm-up instant after now (server ms), or None."""
        found, upcoming = self._instants(self.configs[pool], now_ms)
        later = [at for _, at in found if at > now_ms]
        return min(later) if later else upcoming if upcoming and upcoming > now_ms else None

    async def refresh(self, pool: str, now_ms: int, changed: frozenset[str]) -> None:
        return None  # everything it needs is in the config: instants are computed, not read

    def demands(self, pool: str, now_ms: int) -> Sequence[Demand]:
        out: list[Demand] = []
        for w, at in self._instants(self.configs[pool], now_ms)[0]:
            until = at + round(w.duration * 1000)
            if now_ms < until:
                out.append(Demand(pool, None, w.size, at, until, w.label(local(at, w.timezone)), consumable=True))
        return out

    def notes(self, pool: str, now_ms: int) -> Mapping[str, str]:
        at = self.next_instant(pool, now_ms)
        return {"next_warmup": "" if at is None else from_ms(at).isoformat(timespec="seconds")}
