"""`ridpool plan`: the plan in view, minute by minute, without acting.

The daemon plans a few minutes ahead each round (its sources look no further than an entry acquired now could
live); this module plans the whole window at once with the same pure functions, so an operator sees in advance
what the daemon will do: per pool and minute the target (entries the plan holds ready at the end of the
minute, all channels), the acquires planned within it, and why; for the account, the acquires against the
sustained rate, and every burst at risk with its shortfall.

How it is worked out, from the sources the daemon has:
- demands: the standing sizes, every warm-up instant (`warmups.Warmup.instants`), announcements read from Redis
  (what each still lacks), learned demand (`demand.learned_demands` over the whole window, from the history in
  Redis, the room to max_size shared within the daemon's horizon as the daemon shares it);
- one schedule for every timed demand (`planner.schedule`, earliest deadline first, as late as possible, at
  `planner.available_rate`): the daemon schedules only what is not yet due, and removing what fell due never
  moves a later span, so one schedule gives every minute's plan;
- the target at a minute is what `planner.plan` would give then: standing sizes and running windows in full,
  ramps (`planner.ramp`, with the daemon's look-ahead) of what is due;
- acquires: each rise of a ramp, the renewal of standing entries (size / max_age, as the planner costs them), and
  the renewal of window entries that would die unpopped while their window runs (shown as `(renewal)`: none if
  starters pop them, so this is the most the window can cost); windows already running at the start are taken as
  held. Acquires never exceed the account's sustained rate: what does not fit is acquired later, earliest
  deadline first (the refill catches up at the full budget), and shows as `behind`;
- at risk: the demands whose span would have to begin before their entries could live (`planner.shortfalls`),
  with the entries they would lack at the plan's rate, and the later demands that pushed them there.

`auto_size = "forecast"` pools get the learned demand computed and shown apart (`forecast`: what it would add to
the target), planned as if it acted, while the target and the acquires leave it out.

Pure except `read`, which takes a Redis client; the picture is `planchart`'s.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ridpool import ages, functions
from ridpool.daemon import demand, freshness, planner, warmups
from ridpool.daemon.config import Config, PoolConfig
from ridpool.daemon.planner import Demand, Span
from ridpool.errors import RidpoolError
from ridpool.functions import CHUNK, Announcement
from ridpool.keys import pool_keys
from ridpool.stats import server_ms

MINUTE = 60_000
ANNOUNCED = "announced"  # announcements are shown together: a pool may have thousands in one minute
FORECAST = "forecast (not acted on): "
RENEWAL = " (renewal)"
SHOWN_AT_RISK = 200  # at-risk demands listed (the count is always whole)


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a plan is made from: the config, the instant it starts at (server ms) and its length, and what Redis
    holds (empty without Redis, `note` saying why)."""

    config: Config
    now_ms: int
    minutes: int
    announcements: Mapping[str, Sequence[Announcement]] = field(default_factory=dict)
    history: Mapping[str, Mapping[int, int]] = field(default_factory=dict)  # pool -> minute -> starts
    redis: bool = False  # announcements and history were read
    note: str = ""
    max_age_ms: Mapping[str, int] | None = None  # the life each pool plans with (default: its max_age)


@dataclass(frozen=True, slots=True)
class Row:
    """One pool's minute."""

    at_ms: int
    target: int
    acquires: int
    reasons: tuple[str, ...]
    acquires_by: Mapping[str, int]
    behind: int = 0  # acquires wanted by now that the budget has not fitted yet
    forecast: int = 0  # forecast-only learned demand: what it would add to the target

    @property
    def renewals(self) -> int:
        """Of the acquires, those that renew window entries nobody popped (none if starters pop them)."""
        return sum(n for label, n in self.acquires_by.items() if label.endswith(RENEWAL))


@dataclass(frozen=True, slots=True)
class AtRisk:
    pool: str
    reason: str
    at_ms: int
    start_needed_ms: float  # when the schedule needs acquiring for it to begin
    earliest_ms: float  # before this its entries would die before the instant
    shortfall: int  # entries it would lack at the instant, at the plan's rate
    pushed_by: tuple[str, ...]  # the later demands whose spans push it that early


@dataclass(frozen=True, slots=True)
class Event:
    """An instant a pool plans for (a warm-up's, a learned minute's; announcements per instant), for the chart."""

    pool: str
    at_ms: int
    label: str


@dataclass(frozen=True, slots=True)
class View:
    inputs: Inputs
    rows: Mapping[str, Sequence[Row]]
    account: Sequence[int]  # acquires per minute, all pools
    sustained: float  # acquires/s the budget sustains
    rate: float  # acquires/s timed demands are planned at
    at_risk: Sequence[AtRisk]
    events: Sequence[Event] = ()

    @property
    def minutes(self) -> list[int]:
        start = self.inputs.now_ms // MINUTE * MINUTE
        return [start + i * MINUTE for i in range(self.inputs.minutes)]


def iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- demands -----------------------------------------------------------------------------------------------


def demands(inputs: Inputs) -> tuple[list[Demand], list[Demand]]:
    """Every demand the window needs, acted on; and the forecast-only pools' learned demands."""
    config, now = inputs.config, inputs.now_ms
    end = now // MINUTE * MINUTE + inputs.minutes * MINUTE
    acted: list[Demand] = []
    shown: list[Demand] = []
    for p in config.pools:
        ahead = _max_age(inputs, p) + planner.LEAD_MS + MINUTE  # instants after the window acquire inside it
        if p.slots:
            acted.append(Demand(p.name, None, p.size, 0, None, "size"))
            for j, w in enumerate(p.warmups):
                spec = warmups.Warmup(p.name, j, w.cron, w.timezone, w.size, w.duration)
                after = warmups.from_ms(now) - timedelta(seconds=w.duration) + timedelta(milliseconds=1)
                for at in spec.instants(after, warmups.from_ms(end + ahead)):
                    at_ms = warmups.to_ms(at)
                    label = spec.label(warmups.local(at_ms, w.timezone))
                    until = at_ms + round(w.duration * 1000)
                    acted.append(Demand(p.name, None, w.size, at_ms, until, label, consumable=True))
        for a in inputs.announcements.get(p.name, ()):
            acted.append(Demand(p.name, a.cname, max(0, a.left), a.at_ms, a.until_ms, ANNOUNCED, beyond_live=True))
        if p.learns and p.name in inputs.history:
            found = demand.learned_demands(
                p.name,
                [None],
                inputs.history[p.name],
                now_minute=now // MINUTE,
                horizon=(end + ahead) // MINUTE - now // MINUTE,
                room=(p.max_size or 0) - p.size,
                channels=max(1, len(p.slots)),
                window=demand.planning_horizon(_max_age(inputs, p)),
            )
            (acted if p.acts_on_learned else shown).extend(found)
    return acted, shown


def _max_age(inputs: Inputs, pool: PoolConfig) -> int:
    return (inputs.max_age_ms or {}).get(pool.name, pool.max_age_ms)


# -- the plan ----------------------------------------------------------------------------------------------


@dataclass(order=True, slots=True)
class _Want:
    """Acquires wanted, served earliest deadline first; dropped once they can no longer serve (`until`)."""

    deadline: float
    seq: int
    pool: str = field(compare=False)
    label: str = field(compare=False)
    until: float | None = field(compare=False)  # None: never (the standing size)
    n: int = field(compare=False)


class _Book:
    """Per pool and minute: target parts, forecast parts, acquires wanted."""

    def __init__(self, start: int, minutes: int) -> None:
        self.start, self.minutes = start, minutes
        self.target: dict[str, list[dict[str, int]]] = defaultdict(lambda: [defaultdict(int) for _ in range(minutes)])
        self.forecast: dict[str, list[dict[str, int]]] = defaultdict(lambda: [defaultdict(int) for _ in range(minutes)])
        self.channels: dict[str, list[int]] = defaultdict(lambda: [0] * minutes)  # announced channels counted
        self.wants: list[list[_Want]] = [[] for _ in range(minutes)]
        self.seq = 0

    def row(self, ms: float) -> int:
        return int((ms - self.start) // MINUTE)

    def rows(self, first_ms: float, last_ms: float) -> range:
        """The rows whose minute meets [first_ms, last_ms]."""
        return range(max(0, self.row(first_ms)), min(self.minutes, self.row(last_ms) + 1))

    def want(self, i: int, pool: str, label: str, n: int, *, deadline: float, until: float | None) -> None:
        if n > 0:
            self.seq += 1
            self.wants[i].append(_Want(deadline, self.seq, pool, label, until, n))


def build(inputs: Inputs) -> View:
    """The plan of the window (see the module docstring)."""
    config, now = inputs.config, inputs.now_ms
    start = now // MINUTE * MINUTE
    book = _Book(start, inputs.minutes)
    acted, shown = demands(inputs)
    max_age = {p.name: _max_age(inputs, p) for p in config.pools}
    channels = config.channels
    standing = [d for d in acted if d.until_ms is None]
    rate = planner.available_rate(config.sustained_rate, standing, max_age, channels)
    timed = [d for d in acted if d.until_ms is not None and d.at_ms > now]
    start_rate = config.sustained_rate
    phases = planner.start_phases(acted, channels, start_rate)
    reach = max(max_age.values(), default=0)
    begun = [(at, end) for (_, at), end in phases.items() if at <= now < end + reach]  # as the daemon keeps them
    spans = planner.timed_spans(
        acted, now_ms=now, rate=rate, max_age_ms=max_age, channels=channels, start_rate=start_rate, begun=begun
    )
    for d in standing:
        _standing(book, d, d.count * d.width(channels), max_age[d.pool], now)
    for d in acted:
        if d.until_ms is not None:
            _timed(book, d, spans.get(d), width=d.width(channels), age_ms=max_age[d.pool], now=now)
    if shown:
        with_forecast = planner.timed_spans(
            [*acted, *shown],
            now_ms=now,
            rate=rate,
            max_age_ms=max_age,
            channels=channels,
            start_rate=start_rate,
            begun=begun,
        )
        for d in shown:
            if d in with_forecast:
                _forecast(book, d, with_forecast[d], d.width(channels))
    rows, account = _serve(book, config, now)
    return View(
        inputs,
        rows,
        account,
        config.sustained_rate,
        rate,
        _at_risk(spans, rate, channels),
        _events(timed, shown, channels),
    )


def _events(timed: Iterable[Demand], shown: Iterable[Demand], channels: Mapping[str, int]) -> list[Event]:
    """One per (pool, instant, kind): how many entries it wants then."""
    counts: dict[tuple[str, int, str], int] = defaultdict(int)
    for d in timed:
        kind = "announced" if d.source == ANNOUNCED else "warm-up" if d.consumable else "learned"
        counts[(d.pool, d.at_ms, kind)] += d.count * d.width(channels)
    for d in shown:
        counts[(d.pool, d.at_ms, "forecast")] += d.count * d.width(channels)
    return [
        Event(pool, at, f"{kind} +{n}") for (pool, at, kind), n in sorted(counts.items(), key=lambda i: i[0][1]) if n
    ]


def _end(book: _Book, i: int) -> int:
    """The instant a row's target is read at: the last millisecond of its minute."""
    return book.start + (i + 1) * MINUTE - 1


def _standing(book: _Book, d: Demand, total: int, age_ms: int, now: int) -> None:
    """A standing size: in the target throughout, renewed every max_age (what the planner costs it)."""
    label = f"size {d.count}" + (f" x {total // d.count} channels" if d.count and total != d.count else "")
    per_ms = total / age_ms
    for i in range(book.minutes):
        book.target[d.pool][i][label] += total
        first, last = max(now, book.start + i * MINUTE), book.start + (i + 1) * MINUTE
        n = math.floor(per_ms * (last - now)) - math.floor(per_ms * (first - now))
        book.want(i, d.pool, label, n, deadline=last, until=None)


def _label(d: Demand) -> str:
    return ANNOUNCED if d.source == ANNOUNCED else d.source


def _timed(book: _Book, d: Demand, span: Span | None, *, width: int, age_ms: int, now: int) -> None:
    """A demand with an instant: its ramp before it, its window after it; acquires for the ramp's rises and for
    window entries that would die unpopped while the window runs."""
    assert d.until_ms is not None
    label, count, until = _label(d), d.count, d.until_ms
    ahead = planner.LOOK_MS  # the plan's look-ahead, as planner.plan's
    if span is None and not (d.at_ms <= now < until):
        return  # over, or nothing wanted
    first = span.start_ms - ahead if span is not None else now
    for i in book.rows(first, max(until, d.at_ms)):
        t = _end(book, i)
        if d.at_ms <= t < until:
            n = count
        elif span is not None and t < d.at_ms:
            n = planner.ramp(count, span, t + ahead)
        else:
            n = 0
        if n > 0:
            book.target[d.pool][i][label] += n * width
            if label == ANNOUNCED:
                book.channels[d.pool][i] += 1
    if span is None:
        return  # a window running at the start: taken as held
    # Generation 0 is the ramp; generation g renews what generation g - 1 acquired, max_age later, while the
    # window still runs (entries nobody popped die and are replaced).
    generation = 0
    while True:
        shift = generation * age_ms
        lo, hi = span.start_ms - ahead + shift, span.end_ms - ahead + shift
        if generation and lo >= until:
            break
        for i in book.rows(lo, hi):
            a = max(book.start + i * MINUTE, now)
            b = book.start + (i + 1) * MINUTE
            if generation:
                a, b = min(a, until), min(b, until)
            n = (planner.ramp(count, span, b + ahead - shift) - planner.ramp(count, span, a + ahead - shift)) * width
            if generation:
                book.want(i, d.pool, label + RENEWAL, n, deadline=b, until=until)
            else:
                book.want(i, d.pool, label, n, deadline=d.at_ms, until=max(until, d.at_ms))
        generation += 1
        if until <= d.at_ms:
            break  # ready by the instant, no window after it: nothing to renew


def _forecast(book: _Book, d: Demand, span: Span, width: int) -> None:
    for i in book.rows(span.start_ms - planner.LEAD_MS, d.at_ms):
        t = _end(book, i)
        if t < d.at_ms:
            book.forecast[d.pool][i][FORECAST + d.source] += planner.ramp(d.count, span, t + planner.LEAD_MS) * width


def _serve(book: _Book, config: Config, now: int) -> tuple[dict[str, list[Row]], list[int]]:
    """Acquires within the account's sustained rate, minute by minute, earliest deadline first; the rows."""
    sustained = config.sustained_rate / 1000  # per ms
    pending: list[_Want] = []
    rows: dict[str, list[Row]] = {p.name: [] for p in config.pools}
    account: list[int] = []
    for i in range(book.minutes):
        first, last = max(now, book.start + i * MINUTE), book.start + (i + 1) * MINUTE
        capacity = math.floor(sustained * (last - first))  # never more in a minute than the rate sustains
        for w in book.wants[i]:
            heapq.heappush(pending, w)
        done: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        kept: list[_Want] = []
        while pending and capacity > 0:
            w = heapq.heappop(pending)
            if w.until is not None and w.until <= first:
                continue  # too late to serve: its window is over
            n = min(w.n, capacity)
            capacity -= n
            done[w.pool][w.label] += n
            if n < w.n:
                w.n -= n
                kept.append(w)
        for w in kept:
            heapq.heappush(pending, w)
        behind: dict[str, int] = defaultdict(int)
        for w in pending:
            if w.until is None or w.until > last:
                behind[w.pool] += w.n
        account.append(sum(sum(by.values()) for by in done.values()))
        for p in config.pools:
            parts = book.target[p.name][i] if p.name in book.target else {}
            forecast = book.forecast[p.name][i] if p.name in book.forecast else {}
            announced = book.channels[p.name][i] if p.name in book.channels else 0
            reasons = _reasons({**parts, **forecast}, announced, behind[p.name])
            rows[p.name].append(
                Row(
                    at_ms=book.start + i * MINUTE,
                    target=sum(parts.values()),
                    acquires=sum(done[p.name].values()),
                    reasons=reasons,
                    acquires_by=dict(sorted(done[p.name].items())),
                    behind=behind[p.name],
                    forecast=sum(forecast.values()),
                )
            )
    return rows, account


def _reasons(parts: Mapping[str, int], announced: int, behind: int) -> tuple[str, ...]:
    """Why the target is what it is, the largest part first, standing sizes last (as status words it)."""
    out = []
    for label, n in sorted(parts.items(), key=lambda p: (p[0].startswith("size"), -p[1], p[0])):
        if label == ANNOUNCED:
            out.append(f"{ANNOUNCED}: {announced} channel{'s' if announced != 1 else ''} +{n}")
        elif label.startswith("size"):
            out.append(label)
        elif n > 0:
            out.append(f"{label} +{n}")
    if behind:
        out.append(f"behind {behind} (the budget)")
    return tuple(out)


def _at_risk(spans: Mapping[Demand, Span], rate: float, channels: Mapping[str, int]) -> list[AtRisk]:
    groups: dict[float, list[Demand]] = defaultdict(list)
    for d in spans:
        groups[d.at_ms].append(d)
    instants = sorted(groups)
    out = []
    for d, span in planner.shortfalls(spans):
        group = groups[d.at_ms]
        total = sum(g.count * g.width(channels) for g in group) or 1
        share = d.count * d.width(channels) / total
        short = math.ceil((span.earliest_ms - span.needed_ms) / 1000 * rate * share)
        after = bisect.bisect_right(instants, d.at_ms)
        pushed = tuple(dict.fromkeys(_label(g) for g in groups[instants[after]]))[:3] if after < len(instants) else ()
        if span.end_ms >= d.at_ms - planner.LEAD_MS:
            pushed = ()  # its own size, not a later demand, makes it too early
        out.append(
            AtRisk(
                d.pool,
                _label(d) if d.source != ANNOUNCED else f"announced {d.cname}",
                d.at_ms,
                span.needed_ms,
                span.earliest_ms,
                min(short, d.count * d.width(channels)),
                pushed,
            )
        )
    return out


# -- reading Redis -----------------------------------------------------------------------------------------


def read(client: Any, config: Config, *, minutes: int, now_ms: int | None = None) -> Inputs:
    """Inputs with what Redis holds: its time (unless `now_ms` is given), the announcements of announced pools
    (paged through `ridpool_announcements`, read-only) and the demand history of pools that learn. Redis
    failures propagate (RidpoolError): the caller decides to plan without."""
    prefix = config.redis.key_prefix
    with functions.reaching(client):
        server = server_ms(client.execute_command("TIME"))  # also: is it there at all
    now = now_ms if now_ms is not None else server
    end = now // MINUTE * MINUTE + minutes * MINUTE
    found: dict[str, list[Announcement]] = {}
    history: dict[str, dict[int, int]] = {}
    lives: dict[str, int] = {}
    for p in config.pools:
        keys = pool_keys(prefix, p.name)
        ahead = p.max_age_ms + planner.LEAD_MS + MINUTE
        if p.auto_max_age:  # the life the daemon plans with now: the effective max_age it stored
            with functions.reaching(client):
                fields = client.hmget(keys.meta, list(ages.FRESH_FIELDS))
            stored = ages.stored(fields, server)
            lives[p.name] = freshness.planning_max_age_ms(p, stored.max_age if stored else None)
        if p.announced:
            found[p.name] = []
            offset = 0
            while True:
                call = functions.announcements_call(keys, from_ms=0, to_ms=end + ahead, offset=offset)
                page = functions.parse_announcements(functions.execute(client, call))
                found[p.name] += page.found
                if page.read < CHUNK:
                    break
                offset += page.read
        if p.learns:
            first, last = now // MINUTE + 1, (end + ahead) // MINUTE
            wanted = sorted({lag for m in range(first, last + 1) for lag in demand.lags(m)})
            history[p.name] = {}
            with functions.reaching(client):
                for i in range(0, len(wanted), CHUNK):
                    chunk = wanted[i : i + CHUNK]
                    history[p.name].update(demand.parse_history(chunk, client.hmget(keys.history, chunk)))
    return Inputs(config, now, minutes, found, history, redis=True, max_age_ms=lives or None)


def gather(config: Config, *, hours: float, now_ms: int | None = None) -> Inputs:
    """Read what Redis holds, or (Redis unreachable, or refusing) plan from the config alone and say why."""
    minutes = max(1, round(hours * 60))
    client = None
    try:
        client = config.redis.target().connect()
        return read(client, config, minutes=minutes, now_ms=now_ms)
    except RidpoolError as exc:
        fallback = now_ms if now_ms is not None else round(datetime.now(UTC).timestamp() * 1000)
        what = [
            w
            for w, on in (
                ("announcements", any(p.announced for p in config.pools)),
                ("learned demand", any(p.learns for p in config.pools)),
            )
            if on
        ]
        without = f" (without {' and '.join(what)})" if what else ""
        clock = ", on this host's clock" if now_ms is None else ""
        note = f"{exc}: planned from the config alone{without}{clock}"
        return Inputs(config, fallback, minutes, note=note)
    finally:
        if client is not None:
            client.close()


# -- output ------------------------------------------------------------------------------------------------


def as_json(view: View) -> dict[str, Any]:
    inputs = view.inputs
    return {
        "from": iso(view.minutes[0]),
        "until": iso(view.minutes[-1] + MINUTE),
        "now": iso(inputs.now_ms),
        "redis": {"read": inputs.redis, "note": inputs.note},
        "pools": {
            p.name: {
                "channels": "announced" if p.announced else len(p.slots),
                "size": p.size,
                "max_age": _max_age(inputs, p) / 1000,
                "auto_size": p.auto_size,
                "minutes": [_row_json(r, p.auto_size == "forecast") for r in view.rows[p.name]],
            }
            for p in inputs.config.pools
        },
        "budget": {
            "rate_limit": inputs.config.agora.rate_limit,
            "sustained_per_minute": round(view.sustained * 60, 3),
            "planned_per_minute": round(view.sustained * planner.HEADROOM * 60, 3),
            "timed_per_minute": round(view.rate * 60, 3),
        },
        "account": {
            "minutes": [{"at": iso(at), "acquires": n} for at, n in zip(view.minutes, view.account, strict=True)]
        },
        "at_risk": [
            {
                "pool": a.pool,
                "reason": a.reason,
                "at": iso(a.at_ms),
                "start_needed": iso(a.start_needed_ms),
                "earliest_start": iso(a.earliest_ms),
                "shortfall": a.shortfall,
                "pushed_by": list(a.pushed_by),
            }
            for a in view.at_risk[:SHOWN_AT_RISK]
        ],
        "at_risk_count": len(view.at_risk),
    }


def _row_json(row: Row, forecast: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "at": iso(row.at_ms),
        "target": row.target,
        "acquires": row.acquires,
        "reasons": list(row.reasons),
        "acquires_by": dict(row.acquires_by),
        "behind": row.behind,
    }
    if forecast:
        out["forecast"] = row.forecast
    return out


def _hm(ms: float, previous: float | None) -> str:
    at = datetime.fromtimestamp(ms / 1000, UTC)
    same_day = previous is not None and datetime.fromtimestamp(previous / 1000, UTC).date() == at.date()
    return at.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M")


def _kind(reason: str) -> str:
    """A reason without its figure: minutes whose reasons differ only by figures are one run of the table."""
    return reason.rsplit(" +", 1)[0] if " +" in reason else reason.split(" (", maxsplit=1)[0]


def runs(rows: Sequence[Row]) -> list[list[Row]]:
    """Consecutive minutes with the same target and the same kinds of reasons."""
    out: list[list[Row]] = []
    for row in rows:
        key = (row.target, tuple(_kind(r) for r in row.reasons), row.forecast)
        if out and (out[-1][0].target, tuple(_kind(r) for r in out[-1][0].reasons), out[-1][0].forecast) == key:
            out[-1].append(row)
        else:
            out.append([row])
    return out


def render(view: View) -> str:
    """The compact table: per pool, one line per run of alike minutes; then the account and what is at risk."""
    inputs = view.inputs
    first, last = view.minutes[0], view.minutes[-1] + MINUTE
    lines = [
        f"plan from {iso(first)} to {iso(last)} ({inputs.minutes / 60:g} h, UTC); budget {view.sustained * 60:.1f} "
        f"acquires/min sustained, timed demands planned at {view.rate * 60:.1f}/min",
        "read from Redis: announcements and demand history" if inputs.redis else inputs.note,
    ]
    for p in inputs.config.pools:
        rows = view.rows[p.name]
        where = "announced channels" if p.announced else f"{len(p.slots)} channel{'s' if len(p.slots) != 1 else ''}"
        learned = {True: ", learned demand", "forecast": ", learned demand as a forecast", False: ""}[p.auto_size]
        lines += ["", f"pool {p.name} ({where}, size {p.size}, max_age {_max_age(inputs, p) / 1000:g} s{learned})"]
        table = [("from", "until", "target", "acquires", "peak/min", "why")]
        for run in runs(rows):
            acquires = [r.acquires for r in run]
            why = "; ".join(run[-1].reasons) or "nothing"
            renewals = sum(r.renewals for r in run)
            if renewals:
                why += f"; {renewals} of the acquires renew entries if nobody pops them"
            table.append(
                (
                    _hm(run[0].at_ms, None),
                    _hm(run[-1].at_ms + MINUTE, run[0].at_ms),
                    str(run[0].target),
                    str(sum(acquires)),
                    str(max(acquires)),
                    why,
                )
            )
        widths = [max(len(line[c]) for line in table) for c in range(5)]
        for line in table:
            cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])] + [line[c].rjust(widths[c]) for c in (2, 3, 4)]
            lines.append("  " + "  ".join(cells) + "  " + line[5])
    busiest, most = peak(view)
    lines += [
        "",
        f"account: {sum(view.account)} acquires planned; busiest minute {_hm(busiest, None)} with {most} "
        f"({most / (view.sustained * 60):.0%} of the sustained rate)",
    ]
    if view.at_risk:
        lines.append(f"at risk: {len(view.at_risk)}")
        for a in view.at_risk[:20]:
            pushed = f", pushed early by {', '.join(a.pushed_by)}" if a.pushed_by else ""
            lines.append(
                f"  {a.pool}: {a.reason} at {iso(a.at_ms)}: about {a.shortfall} entries short (acquiring would "
                f"have to start at {iso(a.start_needed_ms)}, entries acquired before {iso(a.earliest_ms)} die "
                f"first{pushed})"
            )
    else:
        lines.append("at risk: none")
    return "\n".join(lines)


def peak(view: View) -> tuple[int, int]:
    """The busiest minute (ms) and its acquires, all pools."""
    i = max(range(len(view.account)), key=lambda j: view.account[j])
    return view.minutes[i], view.account[i]
