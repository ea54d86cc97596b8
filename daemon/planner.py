"""Refill planning as pure functions of counts and clocks: how many entries each channel should hold now, what
is left of a window pops have used, how many acquires may be in flight, and how long a pool is held after
failures.
Table-tested; the refill loop only applies them.

Demands. Everything that makes a pool want entries is a `Demand` for one (pool, channel), or for every channel
of the pool (cname None; a template pool has one queue): `count` entries per channel ready from `at_ms` (server
time) until `until_ms`. Demand sources (`daemon/sources.py`) produce them: the standing size, scheduled warm-ups,
learned demand, announced channels, and any source added to the daemon. A demand is `consumable` when popped
entries use it up (a warm-up, an announcement): those are not acquired again, while the standing size replaces
what is popped. A source reports a window already running as what is *left* of it.

Planning. All demands of all pools share one budget, the account's sustained rate. Demands not yet due are
planned together earliest deadline first, backwards from the latest: each deadline group (all demands due at
one instant) is given the `count / rate` seconds just before its deadline, or before the next group's start if
that is earlier. So acquiring for a burst starts as late as the whole schedule allows, and the entries are as
young as possible at the instant. Within its span a demand's target ramps up linearly (with `ahead_ms` of
look-ahead for acquires in flight); a refill that fell behind catches up at the full budget, faster than the
ramp. A span that would begin before `at_ms - max_age` cannot be met (its first entries would die before the
instant): it is clamped there and reported by `shortfalls`, which `check-config` turns into an error.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ridpool.daemon.backoff import doubling

# A pool whose acquires keep failing is held (no new leases, across replicas) for a while that doubles per
# failure in a row: a wrong secret must not hammer Agora. The cap keeps it to a few attempts a minute.
HOLD_FIRST, HOLD_CAP = 2.0, 20.0
# Share of the sustained rate the warm-up schedule plans with: what is left absorbs the refill of pops and
# failed acquires without making a burst late.
HEADROOM = 0.95
# Default seconds between the end of a warm-up's acquiring and its instant: acquires in flight land, and pops at
# the very instant find everything stored.
LEAD_MS = 2000
# Least life an entry must still have at the instant to count as ready for it.
MARGIN_MS = 1000
# How far ahead a ramp's target looks, for the acquires in flight (a grant's wait and Agora's answer): its
# first acquire goes out this much before its span begins, so feasibility counts it in an entry's age.
LOOK_MS = 1000

SlotKey = tuple[str, str | None]  # (pool, cname); cname None: a template pool's single queue


@dataclass(frozen=True, slots=True)
class Demand:
    """`count` entries of one (pool, channel) wanted ready from `at_ms` until `until_ms` (server ms); cname None:
    `count` for every channel of the pool.

    until_ms None: for ever (the standing size). until_ms == at_ms: ready by the instant, no window after it.
    """

    pool: str
    cname: str | None
    count: int
    at_ms: int
    until_ms: int | None
    source: str  # why, as `status` shows it: "size", "warmup 0 9 * * 1-5 at 2026-11-26T09:00:00+01:00", ...
    consumable: bool = False  # pops use it up: a popped entry is not acquired again for it
    # `count` is on top of the channel's live entries: what is still to acquire for it (a source that keeps its
    # own accounting, as announcements do, says what is left to acquire rather than a level to hold)
    beyond_live: bool = False

    def width(self, channels: Mapping[str, int]) -> int:
        """How many channels it asks entries for."""
        return channels.get(self.pool, 1) if self.cname is None else 1

    @property
    def slot(self) -> SlotKey:
        return (self.pool, self.cname)


@dataclass(frozen=True, slots=True)
class Target:
    """What one channel should hold now, and why."""

    count: int
    reason: str
    consumable: int = 0  # of `count`, what consumable demands want: the pool's pops use it up (ridpool_reserve)
    beyond_live: bool = False  # `count` is on top of the channel's live entries (see Demand.beyond_live)


@dataclass(frozen=True, slots=True)
class Span:
    """When a not-yet-due demand is acquired: its ramp runs from start_ms to end_ms (server ms)."""

    needed_ms: float  # where the schedule wants it to begin
    end_ms: float
    earliest_ms: float  # before this its entries would die before the instant
    gaps: tuple[tuple[float, float], ...] = ()  # earlier bursts' start phases within it: no acquiring then

    def open_ms(self, a: float, b: float) -> float:
        """The time in [a, b] outside the gaps: when the ramp can acquire."""
        if b <= a:
            return 0.0
        return (b - a) - sum(max(0.0, min(b, g1) - max(a, g0)) for g0, g1 in self.gaps)

    @property
    def start_ms(self) -> float:
        return max(self.needed_ms, self.earliest_ms)

    @property
    def feasible(self) -> bool:
        return self.needed_ms >= self.earliest_ms


NO_CHANNELS: Mapping[str, int] = {}


def standing_rate(
    demands: Iterable[Demand], max_age_ms: Mapping[str, int], channels: Mapping[str, int] = NO_CHANNELS
) -> float:
    """Acquires per second that standing sizes cost while nothing is popped: each entry is renewed every max_age."""
    return sum(
        d.count * d.width(channels) * 1000 / max_age_ms[d.pool] for d in demands if d.until_ms is None and d.count > 0
    )


def standing_entries(demands: Iterable[Demand], channels: Mapping[str, int] = NO_CHANNELS) -> dict[str, int]:
    """Entries each pool keeps standing (all channels together): a burst's starters may pop those first."""
    out: dict[str, int] = defaultdict(int)
    for d in demands:
        if d.until_ms is None:
            out[d.pool] += d.count * d.width(channels)
    return dict(out)


def available_rate(
    sustained: float,
    demands: Iterable[Demand],
    max_age_ms: Mapping[str, int],
    channels: Mapping[str, int] = NO_CHANNELS,
) -> float:
    """The rate timed demands (warm-ups, learned, announced) are planned with: the headroom share of the
    sustained rate, less what the standing sizes cost."""
    return max(0.0, sustained * HEADROOM - standing_rate(demands, max_age_ms, channels))


def schedule(
    demands: Iterable[Demand],
    *,
    rate: float,
    max_age_ms: Mapping[str, int],
    lead_ms: int = LEAD_MS,
    channels: Mapping[str, int] = NO_CHANNELS,
    start_rate: float | None = None,
    standing: Mapping[str, int] = NO_CHANNELS,
    look_ms: int = LOOK_MS,
    begun: Iterable[tuple[float, float]] = (),
) -> dict[Demand, Span]:
    """Earliest deadline first, as late as possible: the span of every timed demand (see the module docstring);
    `channels` says how many channels a pool-wide demand (cname None) asks for.

    With `start_rate` (the rate the starters' own `start` calls go at, ahead of any refill: the account's sustained
    rate) the **start phase** is planned too: the N entries of a burst are started in order from its instant, one
    each 1 / start_rate, and the budget is the starters' meanwhile, so an earlier burst's start phase is time no
    acquire for a later one can use (the later one starts acquiring earlier by as much). An entry must still be
    within max_age when its starter's turn comes: the first one acquired is started first (a template pool's
    starter pops the oldest entry at its turn; a channel's starter is placed in line by its entry's expiry, see
    ridpool_take), after the pool's `standing` entries (which may be older: popped first), so a span may begin no
    earlier than the instant + standing / start_rate + margin - max_age, and `look_ms` (the plan's look-ahead: a
    ramp's first acquire goes out that much before its span begins) later still. `begun`: the (instant, end) of
    start phases already running, blocked the same way."""
    groups: dict[int, list[Demand]] = defaultdict(list)
    for d in demands:
        if d.count > 0 and d.until_ms is not None:
            groups[d.at_ms].append(d)
    work = {at: sum(d.count * d.width(channels) for d in group) for at, group in groups.items()}
    phases: list[tuple[float, float]] = [*begun]
    if start_rate and start_rate > 0:
        phases += [(at, at + n * 1000 / start_rate) for at, n in work.items()]
    spans: dict[Demand, Span] = {}
    cursor = math.inf
    for at in sorted(groups, reverse=True):
        end = min(at - lead_ms, cursor)
        need = work[at] * 1000 / rate if rate > 0 else math.inf
        blocked = [p for p in phases if p[0] < at]
        start = _back(end, need, blocked)
        cursor = start
        for d in groups[at]:
            queued = standing.get(d.pool, 0) * 1000 / start_rate if start_rate and start_rate > 0 else 0.0
            gaps = tuple(sorted((max(b0, start), min(b1, end)) for b0, b1 in blocked if b0 < end and b1 > start))
            spans[d] = Span(start, end, d.at_ms + queued + MARGIN_MS + look_ms - max_age_ms[d.pool], gaps)
    return spans


def _back(end: float, need: float, blocked: list[tuple[float, float]]) -> float:
    """Where acquiring must begin to get `need` ms of budget before `end`, skipping the `blocked` intervals (the
    start phases of earlier bursts, when the budget is the starters')."""
    t, left = end, need
    for b0, b1 in sorted(blocked, key=lambda b: b[1], reverse=True):
        if b0 >= t:
            continue
        free = t - b1 if b1 < t else 0.0
        if free >= left:
            return t - left
        left -= free
        t = min(t, b0)
    return t - left


def timed_spans(
    demands: Iterable[Demand],
    *,
    now_ms: int,
    rate: float,
    max_age_ms: Mapping[str, int],
    channels: Mapping[str, int] = NO_CHANNELS,
    start_rate: float | None = None,
    lead_ms: int = LEAD_MS,
    look_ms: int = LOOK_MS,
    begun: Iterable[tuple[float, float]] = (),
) -> dict[Demand, Span]:
    """The spans of the timed demands still ahead of `now`, scheduled with their start phases (and `begun`, those
    of bursts whose instant has passed: see `start_phases`) and the pools' standing entries (which `demands` holds
    too): what the daemon plans by (`plan`), what `ridpool plan` shows and what check-config warns about, computed
    the one way."""
    demands = list(demands)
    return schedule(
        [d for d in demands if d.at_ms > now_ms],
        rate=rate,
        max_age_ms=max_age_ms,
        lead_ms=lead_ms,
        channels=channels,
        start_rate=start_rate,
        standing=standing_entries(demands, channels),
        look_ms=look_ms,
        begun=begun,
    )


def start_phases(
    demands: Iterable[Demand], channels: Mapping[str, int], start_rate: float
) -> dict[tuple[str, int], float]:
    """(pool, instant) -> when the burst's start phase ends: its entries, all timed demands of the pool at that
    instant, started one each 1 / start_rate from the instant."""
    work: dict[tuple[str, int], int] = defaultdict(int)
    for d in demands:
        if d.until_ms is not None and d.count > 0:
            work[(d.pool, d.at_ms)] += d.count * d.width(channels)
    return {(pool, at): at + n * 1000 / start_rate for (pool, at), n in work.items() if start_rate > 0}


def plan(
    demands: Iterable[Demand],
    *,
    now_ms: int,
    rate: float,
    max_age_ms: Mapping[str, int],
    lead_ms: int = LEAD_MS,
    ahead_ms: int = LOOK_MS,
    channels: Mapping[str, int] = NO_CHANNELS,
    start_rate: float | None = None,
    begun: Iterable[tuple[float, float]] = (),
) -> dict[SlotKey, Target]:
    """Every slot's target now: standing sizes and running windows in full, plus the ramps of what is due. A slot
    (pool, None) is what every channel of the pool wants; (pool, cname) what that channel wants besides."""
    demands = list(demands)
    spans = timed_spans(
        demands,
        now_ms=now_ms,
        rate=rate,
        max_age_ms=max_age_ms,
        lead_ms=lead_ms,
        channels=channels,
        start_rate=start_rate,
        look_ms=ahead_ms,
        begun=begun,
    )
    counts: dict[SlotKey, int] = defaultdict(int)
    consumable: dict[SlotKey, int] = defaultdict(int)
    beyond: set[SlotKey] = set()
    reasons: dict[SlotKey, list[tuple[int, str]]] = defaultdict(list)
    for d in demands:
        if d.until_ms is None or d.at_ms <= now_ms < d.until_ms:
            n = d.count  # standing, or a window running now (its count is what is left of it)
        elif d in spans:
            n = ramp(d.count, spans[d], now_ms + ahead_ms)
        else:
            n = 0  # over, or due with nothing wanted
        counts[d.slot] += n
        if d.consumable:
            consumable[d.slot] += n
        if d.beyond_live:
            beyond.add(d.slot)
        if n > 0 or d.until_ms is None:
            reasons[d.slot].append((n, d.source))
    return {slot: Target(counts[slot], _reason(reasons[slot]), consumable[slot], slot in beyond) for slot in counts}


def running_consumable(demands: Iterable[Demand], now_ms: int, early_ms: int = 0) -> list[Demand]:
    """The consumable demands whose window runs now (or begins within `early_ms`): those pops use up."""
    return [d for d in demands if d.consumable and d.until_ms is not None and d.at_ms - early_ms <= now_ms < d.until_ms]


def left(
    demands: Iterable[Demand],
    popped: Mapping[tuple[str, int], int],
    *,
    now_ms: int,
    channels: Mapping[str, int] = NO_CHANNELS,
) -> list[Demand]:
    """Every demand as what is left of it now: a consumable demand whose window runs has its share of the pool's
    pops since its window began taken off. `popped[(pool, at_ms)]` is the pool's pops since `at_ms`.

    A pop uses up one demand only: a pool's pops since its earliest running window are credited to its running
    consumable demands earliest first (a pool of several channels shares them evenly among its channels)."""
    out: list[Demand] = []
    credit: dict[str, int] = {}
    running = sorted(running_consumable(demands, now_ms), key=lambda d: (d.at_ms, d.source))
    for d in running:
        if d.pool not in credit:
            credit[d.pool] = popped.get((d.pool, d.at_ms), 0)
    used: dict[Demand, int] = {}
    for d in running:
        want = d.count * d.width(channels)
        taken = min(want, credit[d.pool])
        credit[d.pool] -= taken
        used[d] = taken
    for d in demands:
        width = d.width(channels)
        out.append(replace(d, count=max(0, math.ceil((d.count * width - used[d]) / width))) if d in used else d)
    return out


def ramp(count: int, span: Span, at_ms: float) -> int:
    """How many of `count` entries the ramp over `span` has reached at `at_ms`: linear in the span's open time
    (it stands still through the gaps, when the budget is the starters')."""
    if at_ms < span.start_ms:
        return 0
    total = span.open_ms(span.start_ms, span.end_ms)
    if at_ms >= span.end_ms or total <= 0:
        return count
    return min(count, math.ceil(count * span.open_ms(span.start_ms, at_ms) / total))


def _reason(parts: list[tuple[int, str]]) -> str:
    """ "size" alone, or the sources that raise the target now, the largest first ("warmup ... +180; size 20")."""
    standing = [f"size {n}" for n, src in parts if src == "size"]
    raised = sorted(((n, src) for n, src in parts if src != "size" and n > 0), key=lambda p: -p[0])
    return "; ".join([f"{src} +{n}" for n, src in raised] + standing) or "size 0"


def shortfalls(spans: Mapping[Demand, Span]) -> list[tuple[Demand, Span]]:
    """The demands the schedule cannot meet: their acquiring would have to start before their entries could live."""
    return sorted(((d, s) for d, s in spans.items() if not s.feasible), key=lambda p: (p[0].at_ms, p[0].pool))


def largest_feasible(
    rate: float, max_age_ms: int, lead_ms: int = LEAD_MS, ahead_ms: float = 0.0, look_ms: int = LOOK_MS
) -> int:
    """The most entries one burst alone can have ready at its instant and still within max_age at its starter's
    turn: (rate) x (max_age - lead - margin - look - ahead), `ahead` the time its starters first spend on the
    pool's standing entries (standing / start rate), `look` the plan's look-ahead. Its first entry is acquired
    N / rate + lead + look before the instant and started first; the later ones are younger at acquire and started
    later, no older at their turn."""
    return max(0, math.floor(rate * (max_age_ms - lead_ms - MARGIN_MS - look_ms - ahead_ms) / 1000))


def in_flight_cap(rate: float, latency: float, *, low: int = 2, high: int = 64) -> int:
    """Acquires a pool may have in flight when none is configured: enough to keep the whole budget busy.

    A lease is held while its acquire waits for a grant and while Agora answers, so the budget is kept busy by
    about rate x (latency + the wait for a grant); half a second of grant wait covers one replica's queue. Bounded
    by `high`, or by two seconds of the budget when that is more (a raised quota is not capped by a fixed number).
    """
    if not math.isfinite(latency) or latency < 0:
        latency = 1.0
    return max(low, min(max(high, math.ceil(2 * rate)), math.ceil(rate * (latency + 0.5)) + 1))


def hold_for(consecutive_failures: int) -> float:
    """Seconds a pool is held after its n-th failed acquire in a row (n >= 1)."""
    return doubling(consecutive_failures, HOLD_FIRST, HOLD_CAP)
