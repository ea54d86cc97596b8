"""Freshness from evidence (`auto_max_age = true`): the effective max_age of a pool, decided from starters' reports
of how `start` went by the age of the ID. Pure: no I/O, no clock; a test replays recorded report histories.

Agora says to start within two seconds of `acquire` and that batch-acquired IDs "may cause failures", not which.
Starters report every start (`report()`: ok or failed, with the ID's age); this module reads those reports, kept
per minute in age buckets fine near zero (`EDGES`: 0-2, 2-5, 5-10, 10-20, 20-30 s, then 30 s buckets), and
decides how old an entry may be when it is offered.

**Down.** For each bucket edge `e` below the current value, the starts of IDs aged `e` and more ("older") are set
against those younger than `e`. Starts are reported with the ID's age at the start, a moment after the pop, so
entries offered up to the current value are reported a little above it too: those count, as do probes; starts
above the current value reported before it was decided do not (they were offered under a longer life and
already moved it down). The value drops to `e` (never below `min_max_age`) when, over the recent reports
(`Policy.window`, an hour), both sides have at least `min_reports` (20) starts and

1. older starts fail more often than `max_start_failure`: a one-sided exact binomial test of H0 "their failure
   rate is at most max_start_failure" rejected at `alpha` (0.001); and
2. older starts fail more often than younger ones: a one-sided Fisher exact test of H0 "older fail no more often
   than younger" rejected at `alpha`.

Exact tests, because the counts that matter are small (tens of starts in a bucket, rates near 5%), where the
normal approximations (Wald, a two-proportion z-test) are poor; Fisher's test is the exact counterpart of the
comparison, and test 2 is what keeps a drop from answering failures that do not depend on age (an Agora outage
fails young and old alike, and a shorter life would only waste IDs). `alpha` is small because up to 14 edges
are tested every minute (Bonferroni: ~1.4% family-wise per decision) and starts of one burst are not
independent; `min_reports` keeps three failures in a row from deciding anything. Of the edges that pass, the
largest is taken: the value comes down a step at a time, each on evidence, rather than overshooting below the
age where failures begin.

**Evidence from younger IDs.** Pops take the oldest entry first, so a pool whose entries are always old has no
younger starts to compare with. When older starts fail too often (test 1) but fewer than `min_reports` younger
starts were reported, the decision asks for a young probe: a small share (`probe_share`, 5%) of pops served the
youngest entry instead, until the comparison can be made.

**Up.** Below the ceiling, the decision asks for an old probe: a share of pops may take entries aged up to the
next edge above the current value (the pop serves them the youngest entry past the current value: the least
risky evidence, and one whose start, a moment after the pop, still falls in the band). The value moves up to
that edge only on evidence that the band is fine: at least `min_reports` starts in it, and a one-sided exact
binomial test of H0 "their failure rate is at least max_start_failure" rejected at `up_alpha` (0.05; the exact
Clopper-Pearson upper bound is below max_start_failure: 59 clean starts at 5%); and not while starts older than
the edge failed too often within the window (what moved the value down must leave the window first). Up is
slower than down by design, one band at a time.

Applying a decision is not this module's: the reports are kept per minute by `ridpool_report` (pool/ages.py reads
them), the per-minute job (daemon/freshen.py) decides and stores the value with `ridpool_freshen` and logs
`freshness.changed`, the pop offers only entries younger than it and serves the probes (functions.lua), the
refill plans and acquires for the shorter life. This module only decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ridpool.ages import EDGES, TOP, Tally, over, upper

if TYPE_CHECKING:
    from ridpool.daemon.config import PoolConfig

Minute = Mapping[int, Tally]  # bucket edge (s) -> the starts of one minute
Reports = Mapping[int, Minute]  # minute index (server ms // 60000) -> its starts


@dataclass(frozen=True, slots=True)
class Policy:
    """How one pool decides: its bounds from the config, the statistics' settings (defaults as documented)."""

    max_age: float  # s, the ceiling (the pool's max_age)
    min_max_age: float  # s, the floor
    max_start_failure: float = 0.05
    window: int = 60  # minutes of reports a decision reads
    alpha: float = 0.001  # down: each one-sided exact test
    up_alpha: float = 0.05  # up: the band's failure rate shown below max_start_failure
    min_reports: int = 20  # on each side of a comparison, and in a probe band
    probe_share: float = 0.05  # of pops, for either probe

    @classmethod
    def of(cls, pool: PoolConfig) -> Policy:
        return cls(pool.max_age, min(pool.min_max_age, pool.max_age), pool.max_start_failure)


@dataclass(frozen=True, slots=True)
class Probe:
    """What the pop is asked to do with a share of its pops to gather evidence."""

    kind: Literal["younger", "older"]  # take the youngest entry; or offer entries up to `up_to`
    share: float
    up_to: float | None = None  # s, for "older": the band [max_age, up_to) is being judged


@dataclass(frozen=True, slots=True)
class Decision:
    """The effective max_age and why. The caller keeps `max_age` and, when `changed`, the minute it was decided
    (the next `decide`'s `since`)."""

    max_age: float  # s, the effective max_age
    changed: bool
    reason: str  # in words, with the figures: what `freshness.changed` logs and status shows
    probe: Probe | None = None
    older: Tally = field(default_factory=Tally)  # the figures the decision turned on
    younger: Tally = field(default_factory=Tally)
    p_value: float | None = None

    def fields(self) -> dict[str, object]:
        """The figures as log fields (`freshness.changed`)."""
        return {
            "max_age": self.max_age,
            "reason": self.reason,
            "older_starts": self.older.n,
            "older_failed": self.older.failed,
            "younger_starts": self.younger.n,
            "younger_failed": self.younger.failed,
            "p_value": self.p_value,
            "probe": None if self.probe is None else self.probe.kind,
        }


def totals(reports: Reports, *, now_minute: int, window: int) -> dict[int, Tally]:
    """Every bucket's starts over the minutes (now_minute - window, now_minute]."""
    return over(reports, now_minute=now_minute, window=window)


def _sum(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total += t
    return total


def decide(current: float, reports: Reports, *, now_minute: int, policy: Policy, since: int | None = None) -> Decision:
    """The effective max_age after the reports up to `now_minute`, starting from `current`, the value decided at
    minute `since` (None: for longer than the window). See the module docstring. `current` outside
    [min_max_age, max_age] (a config changed since) is brought inside first."""
    floor, ceiling = policy.min_max_age, policy.max_age
    now = float(min(max(current, floor), ceiling))
    by_edge = totals(reports, now_minute=now_minute, window=policy.window)
    # Starts are reported with the ID's age at the start, a little after the pop: starts of entries offered up
    # to `now` land above it, and so do the probes'. Those count as older; starts above `now` reported before
    # `now` was decided do not (they were offered under a longer life, and already moved it down).
    recent = (
        by_edge
        if since is None
        else totals(reports, now_minute=now_minute, window=min(policy.window, now_minute - since))
    )
    judged = {edge: t for edge, t in by_edge.items() if edge < now}
    for edge, t in recent.items():
        if edge >= now:
            judged[edge] = t
    p0, least = policy.max_start_failure, policy.min_reports
    for e in sorted((e for e in EDGES if e > 0 and max(e, floor) < now), reverse=True):
        older = _sum(t for edge, t in judged.items() if edge >= e)
        younger = _sum(t for edge, t in judged.items() if edge < e)
        if older.n < least:
            continue
        too_many = binom_sf(older.failed, older.n, p0)
        if too_many > policy.alpha:
            continue
        if younger.n < least:
            # Every lower edge has fewer younger starts still: no comparison can be made until some are reported.
            why = (
                f"starts aged {e} s and more fail {_share(older)}, above {p0:.0%} (binomial p={too_many:.1e}), but "
                f"only {younger.n} younger starts to compare with: probing younger entries"
            )
            return Decision(now, now != current, why, Probe("younger", policy.probe_share), older, younger, too_many)
        p = fisher_greater(older, younger)
        if p <= policy.alpha:
            new = max(float(e), floor)
            why = (
                f"starts aged {e} s and more fail {_share(older)}, above {p0:.0%} (binomial p={too_many:.1e}), and "
                f"more than younger ones {_share(younger)} (Fisher p={p:.1e}): max_age {_s(now)} -> {_s(new)} s"
            )
            return Decision(new, new != current, why, _up_probe(new, policy), older, younger, p)
    if now >= ceiling:
        return Decision(now, now != current, f"max_age {_s(now)} s, the ceiling: no evidence against it")
    up_to = _next_edge(now, ceiling)
    band = _sum(t for edge, t in by_edge.items() if edge < up_to and upper(edge) > now)
    above = _sum(t for edge, t in by_edge.items() if edge >= up_to)
    probing = _up_probe(now, policy)
    if above.n >= least and (stale := binom_sf(above.failed, above.n, p0)) <= policy.alpha:
        # Going up would offer what recent starts still fail on: wait until that evidence leaves the window.
        why = (
            f"max_age {_s(now)} s: starts aged {_s(up_to)} s and more failed {_share(above)} within the last "
            f"{policy.window} min (binomial p={stale:.1e})"
        )
        return Decision(now, now != current, why, probing, above, Tally(), stale)
    if band.n >= least and (fine := binom_cdf(band.failed, band.n, p0)) <= policy.up_alpha:
        why = (
            f"starts aged {_s(now)}-{_s(up_to)} s failed {_share(band)}, below {p0:.0%} (binomial p={fine:.2g}): "
            f"max_age {_s(now)} -> {_s(up_to)} s"
        )
        return Decision(up_to, True, why, _up_probe(up_to, policy), band, Tally(), fine)
    why = f"max_age {_s(now)} s: probing {_s(now)}-{_s(up_to)} s ({band.n} starts, {band.failed} failed)"
    return Decision(now, now != current, why, probing, band)


def _up_probe(at: float, policy: Policy) -> Probe | None:
    return Probe("older", policy.probe_share, _next_edge(at, policy.max_age)) if at < policy.max_age else None


def _next_edge(at: float, ceiling: float) -> float:
    return float(min(ceiling, next((e for e in EDGES if e > at), TOP)))


def _s(seconds: float) -> str:
    return f"{seconds:g}"


def _share(t: Tally) -> str:
    return f"{t.failed}/{t.n} ({t.rate:.0%})"


def planning_max_age_ms(pool: PoolConfig, effective: float | None) -> int:
    """The max_age the refill plans and acquires with: the effective value when auto_max_age decided one, kept
    within [min_max_age, max_age]; else the configured max_age."""
    if not pool.auto_max_age or effective is None:
        return pool.max_age_ms
    return round(min(max(effective, pool.min_max_age), pool.max_age) * 1000)


def feasibility_max_age_ms(pool: PoolConfig) -> int:
    """The max_age `check-config` should judge standing sizes and warm-ups with: with auto_max_age the effective
    value may fall to min_max_age, so what must fit, fits at the floor; else the configured max_age."""
    return round(feasibility_max_age(pool.max_age, auto=pool.auto_max_age, floor=pool.min_max_age) * 1000)


def feasibility_max_age(max_age: float, *, auto: bool, floor: float) -> float:
    """feasibility_max_age_ms in seconds, from the values themselves (check-config judges raw tables too)."""
    return min(floor, max_age) if auto else max_age


# -- exact tests -------------------------------------------------------------------------------------------
# Tail sums of a discrete distribution, term by term from the first with each term's ratio to the one before (in
# logs, so that no term underflows before the sum is seen), stopping once the terms left cannot change the sum.


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _tail(first: float, ratio: Callable[[int], float], indices: range) -> float:
    """Sum of exp(log term) over `indices`, term i+step being term i times exp(ratio(i))."""
    terms: list[float] = []
    log_term, peak = first, first
    for i in indices:
        if log_term > -math.inf:
            terms.append(math.exp(log_term))
        peak = max(peak, log_term)
        step = ratio(i)
        if step < 0 and log_term < peak - 50:  # decreasing, and e^-50 of the largest term: nothing left to add
            break
        log_term += step
    return min(1.0, math.fsum(terms))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of k failures in n against a rate of p."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    odds = math.log(p) - math.log1p(-p)
    first = _log_choose(n, k) + k * math.log(p) + (n - k) * math.log1p(-p)
    return _tail(first, lambda i: math.log((n - i) / (i + 1)) + odds if i < n else -math.inf, range(k, n + 1))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p): the one-sided p-value of as few as k failures in n against p."""
    if k >= n or p <= 0:
        return 1.0
    if k < 0 or p >= 1:
        return 0.0
    odds = math.log(p) - math.log1p(-p)
    first = _log_choose(n, k) + k * math.log(p) + (n - k) * math.log1p(-p)
    return _tail(first, lambda i: math.log(i / (n - i + 1)) - odds if i > 0 else -math.inf, range(k, -1, -1))


def fisher_greater(a: Tally, b: Tally) -> float:
    """One-sided Fisher exact test: the p-value of `a` failing at least this much more often than `b` if both
    failed alike (hypergeometric: a.failed or more of all failures falling in a's a.n starts)."""
    total, failures, drawn = a.n + b.n, a.failed + b.failed, a.n
    if failures == 0 or a.failed <= max(0, drawn - (total - failures)):
        return 1.0  # no failures, or as few in `a` as there can be

    def ratio(i: int) -> float:
        # P(i+1) / P(i) for the hypergeometric: (K - i)(n - i) / ((i + 1)(N - K - n + i + 1))
        if i >= min(failures, drawn):
            return -math.inf
        return math.log((failures - i) * (drawn - i) / ((i + 1) * (total - failures - drawn + i + 1)))

    first = (
        _log_choose(failures, a.failed) + _log_choose(total - failures, drawn - a.failed) - _log_choose(total, drawn)
    )
    return _tail(first, ratio, range(a.failed, min(failures, drawn) + 1))
